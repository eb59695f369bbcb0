import io
import logging

from rt import logs


def test_scrub_uri_hides_credentials_only():
    uri = "/ws/socket.io/?EIO=4&transport=polling&token=eyJ.secret.sig&t=abc&api_key=k"
    scrubbed = logs.scrub_uri(uri)
    assert "eyJ.secret.sig" not in scrubbed and "=k" not in scrubbed.split("api_key")[1][:3]
    assert "token=***" in scrubbed and "api_key=***" in scrubbed and "t=abc" in scrubbed
    assert logs.scrub_uri("/healthz") == "/healthz"


def test_journal_format_has_priorities_and_no_timestamp(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("info", stream=out)
        logging.getLogger("rt.test").warning("disk %s", "full")
        logging.getLogger("rt.test").info("fine")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert out.getvalue().splitlines() == ["<4>rt.test: disk full", "<6>rt.test: fine"]


def test_plain_format_has_timestamps(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("warning", stream=out)
        logging.getLogger("rt.test").info("hidden")
        logging.getLogger("rt.test").error("shown")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("ERROR rt.test: shown") and lines[0][:4].isdigit()
