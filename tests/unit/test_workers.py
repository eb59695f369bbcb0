"""The pure parts of `[server] workers`: whose a sid is, what a worker is told, how the
workers' figures merge, how `auto` resolves."""
from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rt import config
from rt.engine.server import EngineServer
from rt.workers.broker import BrokerError, find_program
from rt.workers.gather import merge
from rt.workers.role import WorkerRole
from rt.workers.routing import Siblings, owner_of
from rt.workers.supervisor import workers_to_run


def test_a_sid_names_its_worker():
    engine = EngineServer()
    assert owner_of(engine.generate_id()) is None  # one process: no prefix
    engine.sid_prefix = "3."
    sid = engine.generate_id()
    assert sid.startswith("3.") and owner_of(sid) == 3
    # base64url never holds a '.', so a prefix is never mistaken for part of the id
    assert owner_of("abc-_DEF") is None and owner_of("x.y") is None and owner_of(".y") is None


def test_siblings_pass_on_only_what_another_existing_worker_holds():
    role = WorkerRole(index=1, count=3, run_dir="/run/x", listen_fds=(5,))
    siblings = Siblings(role, timeout=60)
    assert siblings.elsewhere("0.abc") and siblings.elsewhere("2.abc")
    assert not siblings.elsewhere("1.abc")  # its own
    assert not siblings.elsewhere("7.abc")  # no such worker: looked up here, and unknown
    assert not siblings.elsewhere("plainsid")
    assert role.sibling_socket(2) == "/run/x/worker-2.sock"
    assert role.handoff_socket(0) == "/run/x/worker-0.handoff"


def test_a_role_travels_through_the_environment():
    role = WorkerRole(index=2, count=4, run_dir="/run/rt", listen_fds=(7, 8), broker="/run/b")
    assert WorkerRole.from_env(role.env()) == role
    assert WorkerRole.from_env({}) is None
    assert role.name == "worker 2"


def test_workers_option_auto_and_bounds(tmp_path):
    assert config.load_settings(None, {}, {}).server.workers == 0  # auto
    assert config.worker_count(0) == max(1, min(len(os.sched_getaffinity(0)),
                                                config.WORKERS_CAP))
    assert config.worker_count(5) == 5
    ini = tmp_path / "rt.ini"
    for text, expected in (("auto", 0), ("1", 1), ("64", 64), (" AUTO ", 0)):
        ini.write_text(f"[server]\nworkers = {text}\n")
        assert config.load_settings(str(ini), {}, {}).server.workers == expected
    for bad in ("0", "65", "many", "-1"):
        ini.write_text(f"[server]\nworkers = {bad}\n")
        with pytest.raises(config.ConfigError, match=r"\[server\] workers"):
            config.load_settings(str(ini), {}, {})
    settings = config.load_settings(None, {"RT_SERVER_WORKERS": "3"}, {})
    assert settings.server.workers == 3
    assert "workers = auto" in config.render_default_ini()


def _samples(text: bytes) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _worker(connections: float, online: float, lag: float, store_up: float, started: float,
            docs: float) -> bytes:
    return f"""# HELP rt_connections Live connections by transport
# TYPE rt_connections gauge
rt_connections{{transport="websocket"}} {connections}
rt_connections{{transport="polling"}} 1.0
# HELP rt_events_in_total Events received
# TYPE rt_events_in_total counter
rt_events_in_total{{event="heartbeat"}} 10.0
# HELP rt_users_online Users with a live session (cluster-wide)
# TYPE rt_users_online gauge
rt_users_online {online}
# HELP rt_event_loop_lag_seconds How late the event loop ran a timer, last sample
# TYPE rt_event_loop_lag_seconds gauge
rt_event_loop_lag_seconds {lag}
# HELP rt_store_up 1 when the store (SQLite or Redis) answers
# TYPE rt_store_up gauge
rt_store_up {store_up}
# HELP rt_documents Stored Yjs documents
# TYPE rt_documents gauge
rt_documents {docs}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {started}
# HELP rt_build_info Version and state backend
# TYPE rt_build_info gauge
rt_build_info{{backend="sqlite",version="1.0"}} 1.0
""".encode()


def test_merged_metrics_add_what_adds_and_keep_what_is_whole():
    merged = _samples(merge([_worker(3, 7, 0.002, 1, 100, 4), _worker(5, 7, 0.010, 0, 90, 4)]))
    assert merged["rt_workers"] == 2
    assert merged["rt_connections{transport=websocket}"] == 8  # each worker's own: summed
    assert merged["rt_connections{transport=polling}"] == 2
    assert merged["rt_events_in_total{event=heartbeat}"] == 20
    assert merged["rt_users_online"] == 7  # cluster-wide: the same whole in each
    assert merged["rt_documents"] == 4  # what is stored
    assert merged["rt_event_loop_lag_seconds"] == 0.010  # the latest loop
    assert merged["rt_store_up"] == 0  # the worst worker's word
    assert merged["process_start_time_seconds"] == 90  # the oldest
    assert merged["rt_build_info{backend=sqlite,version=1.0}"] == 1
    # a worker that did not answer is simply absent, and says so
    assert _samples(merge([_worker(3, 7, 0, 1, 100, 4)]))["rt_workers"] == 1


def test_merged_metrics_keep_label_values_intact():
    text = b'''# HELP rt_limited_total Refusals
# TYPE rt_limited_total counter
rt_limited_total{limit="a \\"quoted\\" \\\\ value"} 2.0
'''
    merged = merge([text, text])
    family = next(f for f in text_string_to_metric_families(merged.decode())
                  if f.name == "rt_limited")
    assert family.type == "counter"
    (sample,) = family.samples
    assert sample.labels == {"limit": 'a "quoted" \\ value'} and sample.value == 4


def test_auto_without_a_broker_program_runs_one_process(tmp_path):
    missing = tmp_path / "no-such-valkey-server"

    def settings(workers: str, manager: str = "") -> config.Settings:
        ini = tmp_path / "rt.ini"
        ini.write_text(f"[server]\nworkers = {workers}\nworker_broker = {missing}\n"
                       f"[state]\nmanager = {manager}\n")
        return config.load_settings(str(ini), {}, {})

    auto = settings("auto")
    assert workers_to_run(auto, 4) == 1  # said in the log; the appliance still starts
    assert workers_to_run(settings("3"), 3) == 3  # asked for by number: the start fails
    assert workers_to_run(settings("auto", "redis"), 4) == 4  # Redis needs no broker
    with pytest.raises(BrokerError, match="not an executable file"):
        find_program(str(missing))
    assert os.access(find_program(), os.X_OK)  # the pinned wheel's, in this environment
