"""`install` / `uninstall` into a temporary prefix: files, modes, idempotence, config kept."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rt import __version__, config, install

ROOT = Path(__file__).resolve().parents[2]


def paths(prefix: Path) -> dict[str, Path]:
    return {
        "binary": prefix / "usr/local/bin/rt-appliance",
        "unit": prefix / "etc/systemd/system/rt-appliance.service",
        "config": prefix / "etc/rt-appliance/rt-appliance.ini",
        "state": prefix / "var/lib/rt-appliance",
    }


def run_install(prefix: Path, **kw) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = install.install(prefix, say=lines.append, **kw)
    return code, lines


def run_uninstall(prefix: Path, purge: bool = False) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = install.uninstall(prefix, purge, say=lines.append)
    return code, lines


def test_embedded_unit_is_the_shipped_file():
    assert install.UNIT_TEXT == (ROOT / "systemd" / "rt-appliance.service").read_text()


def test_install_from_a_checkout(tmp_path):
    p = paths(tmp_path)
    code, out = run_install(tmp_path)
    assert code == 0
    assert p["unit"].read_text() == install.UNIT_TEXT
    assert p["unit"].stat().st_mode & 0o777 == 0o644
    assert p["config"].read_text() == config.render_default_ini()
    assert p["config"].stat().st_mode & 0o777 == 0o640
    assert p["state"].is_dir() and p["state"].stat().st_mode & 0o777 == 0o750
    assert p["binary"].stat().st_mode & 0o777 == 0o755
    # the launcher really runs this checkout
    ran = subprocess.run([str(p["binary"]), "version"], capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"rt-appliance {__version__}"
    text = "\n".join(out)
    for step in ("useradd --system", "systemctl daemon-reload",
                 "systemctl enable --now rt-appliance", "chgrp rt-appliance"):
        assert step in text
    assert not list(p["binary"].parent.glob(".rt-appliance.*")), "temporary file left"


def test_install_again_keeps_an_edited_config(tmp_path):
    p = paths(tmp_path)
    assert run_install(tmp_path)[0] == 0
    p["config"].write_text("[server]\nport = 9000\n")
    p["unit"].write_text("stale\n")
    (p["state"] / "api_key").write_text("k")
    code, out = run_install(tmp_path)
    assert code == 0
    assert p["config"].read_text() == "[server]\nport = 9000\n"
    assert any("kept" in line for line in out)
    assert not any("chgrp" in line for line in out)
    assert p["unit"].read_text() == install.UNIT_TEXT  # ours, rewritten
    assert (p["state"] / "api_key").read_text() == "k"


def test_frozen_binary_is_copied(tmp_path, monkeypatch):
    fake = tmp_path / "dist" / "rt-appliance"
    fake.parent.mkdir()
    fake.write_bytes(b"\x7fELF one-file binary")
    fake.chmod(0o700)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(fake))
    prefix = tmp_path / "root"
    p = paths(prefix)
    assert run_install(prefix)[0] == 0
    assert p["binary"].read_bytes() == fake.read_bytes()
    assert p["binary"].stat().st_mode & 0o777 == 0o755
    # `/usr/local/bin/rt-appliance install` run by the installed binary itself
    monkeypatch.setattr(sys, "executable", str(p["binary"]))
    code, out = run_install(prefix)
    assert code == 0 and any("already this file" in line for line in out)
    assert p["binary"].read_bytes() == fake.read_bytes()


def test_uninstall_keeps_config_and_data(tmp_path):
    p = paths(tmp_path)
    run_install(tmp_path)
    (p["state"] / "rt-appliance.sqlite3").write_bytes(b"data")
    code, out = run_uninstall(tmp_path)
    assert code == 0
    assert not p["binary"].exists() and not p["unit"].exists()
    assert p["config"].exists() and (p["state"] / "rt-appliance.sqlite3").exists()
    assert any("daemon-reload" in line for line in out)
    # again: nothing left to remove, still fine
    code, out = run_uninstall(tmp_path)
    assert code == 0 and any(line.startswith("absent") for line in out)


def test_uninstall_purge(tmp_path):
    p = paths(tmp_path)
    run_install(tmp_path)
    (p["state"] / "api_key").write_text("k")
    code, out = run_uninstall(tmp_path, purge=True)
    assert code == 0
    for key in ("binary", "unit", "config", "state"):
        assert not p[key].exists(), key
    assert not (tmp_path / "etc/rt-appliance").exists()
    assert any("userdel rt-appliance" in line for line in out)
    # a reinstall after a purge starts from the defaults again
    assert run_install(tmp_path)[0] == 0
    assert p["config"].read_text() == config.render_default_ini()


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rt-appliance")
    install.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_command_line(tmp_path, capsys):
    assert install.run(cli(["install", "--prefix", str(tmp_path)])) == 0
    assert "systemctl enable --now rt-appliance" in capsys.readouterr().out
    assert install.run(cli(["uninstall", "--prefix", str(tmp_path), "--purge"])) == 0
    assert not paths(tmp_path)["config"].exists()
    assert cli(["install"]).prefix == "/"


def test_command_line_reports_a_permission_error(tmp_path, monkeypatch, capsys):
    def denied(prefix, say=print):
        raise PermissionError(13, "Permission denied", "/usr/local/bin/rt-appliance")

    monkeypatch.setattr(install, "install", denied)
    assert install.run(cli(["install"])) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "--prefix" in err


@pytest.mark.parametrize("root", ["/home/u/rt", str(Path("/", "root", "rt"))])
def test_a_checkout_under_home_is_flagged(tmp_path, monkeypatch, root):
    monkeypatch.setattr(install, "__file__", f"{root}/rt/install.py")
    _, out = run_install(tmp_path)
    assert any("ProtectHome" in line for line in out)
