"""The flood block of bench/run.py (issue 16): what one flooding client costs the others.

One appliance with its production limits (only the per-address connection limits lifted:
every client comes from 127.0.0.1). K clients in `channel:bench` send acked `user-join`
requests at a fixed total rate (open loop) and their round trips are measured: p50, p99 and
the largest (the longest the server kept anyone waiting). Phases, in turn, per round:

- quiet: nobody floods;
- typing: one more member of the channel emits `events:channel` typing events in bursts of
  20,000 as fast as its socket takes them;
- yjs: it joins a note it may write and sends a real Yjs update per keystroke, as fast;
- garbage: it sends events the server refuses (unknown names, invalid payloads) and ends
  every burst with a malformed Socket.IO packet, which closes its connection; it reconnects.

The flooder (a bench/load.mjs process of its own) reconnects whenever the server closes it.
The target: p99 within twice the quiet figure, and no round trip over 50 ms.

`run.py` passes itself in as `rb` (its children, workers and meters), so that this module
shares its process bookkeeping instead of importing a second copy of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

FLOOD_INI = """\
[limits]
max_connections = 1000000
max_connections_per_ip = 1000000
connects_per_second_per_ip = 1000000
connect_burst_per_ip = 1000000
api_requests_per_second = 1000000
api_burst = 1000000

[log]
level = warning

[server]
workers = 1
"""

PHASES = ("quiet", "typing", "yjs", "garbage")
FLOODER = "bflooder"
NOTE = "bench-flood"
TARGET_RATIO, TARGET_MAX_MS = 2.0, 50.0

PROFILES = {
    "quick": dict(rounds=1, clients=20, rate=200, duration=4.0, lead=0.5, settle=1.0),
    "full": dict(rounds=3, clients=20, rate=200, duration=12.0, lead=0.5, settle=2.0),
}


def run_block(rb: Any, mode: str, run_dir: Path, rounds: int | None = None) -> dict[str, Any]:
    """Every phase for every round: {"profile", "rounds": {phase: [result...]}}."""
    prof = dict(PROFILES[mode])
    if rounds:
        prof["rounds"] = rounds
    users = [f"bf{i:03d}" for i in range(prof["clients"])]
    server = rb.Server("appliance", run_dir, "flood", ini=FLOOD_INI).start()
    others = rb.Worker("flood-others", run_dir)
    flooder = rb.Worker("flooder", run_dir)
    out: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
    try:
        rb.register_users(server, users + [FLOODER])
        rb.put_channel(server, users + [FLOODER])
        status, body = rb.http_call(server.port, "PUT", f"/api/v1/notes/{NOTE}",
                                    {"owner": FLOODER, "read": [], "write": []})
        if status != 200:
            raise rb.BenchError(f"PUT note: {status} {body[:200]!r}")
        others.call("connect", url=server.url, path="/ws/socket.io", users=users,
                    concurrency=10, timeout=60)
        joined = others.call("emit_all", event="user-join", data={}, timeout=60)
        if joined["acked"] != len(users):
            raise rb.BenchError(f"flood: user-join: {joined}")
        for rnd in range(prof["rounds"]):
            for phase in PHASES:
                rb.DEADLINE.check("flood")
                result = _phase(rb, prof, server, others, flooder, phase)
                out[phase].append(result)
                rb.log(f"flood round {rnd + 1} {phase}: p50 {rb.fmt(result['p50_ms'])} ms, "
                       f"p99 {rb.fmt(result['p99_ms'])} ms, max {rb.fmt(result['max_ms'])} ms"
                       + (f"; flooder wrote {result['flood']['written']:,} in "
                          f"{result['flood']['connects']} connection(s), "
                          f"{result['flood']['reasons']}" if result.get("flood") else ""))
    finally:
        others.close()
        flooder.close()
        server.stop()
    return {"profile": prof, "rounds": out}


def _phase(rb: Any, prof: dict[str, Any], server: Any, others: Any, flooder: Any,
           phase: str) -> dict[str, Any]:
    duration = prof["duration"]
    flood_id = None
    meter = rb.Meter(server, [others, flooder])
    if phase != "quiet":
        flood_id = flooder.send(
            "flood", url=server.url, path="/ws/socket.io", user=FLOODER, kind=phase,
            channel=rb.CHANNEL, document_id=f"note:{NOTE}",
            duration_ms=int((duration + 2 * prof["lead"]) * 1000))
        rb.time.sleep(prof["lead"])  # the flood is in full swing before measuring
    rtt = others.call("rtt", event="user-join", data={}, clients=prof["clients"],
                      rate_per_client=prof["rate"] / prof["clients"],
                      duration_ms=int(duration * 1000), timeout_ms=5000,
                      timeout=duration + 30)
    flood = flooder.recv(flood_id, timeout=duration + 60) if flood_id is not None else None
    m = meter.done()
    rb.time.sleep(prof["settle"])  # what the flooder left in flight is gone
    hist = rb.merge_hists([rtt["hist"]])
    return {
        "sent": rtt["sent"], "acked": rtt["acked"], "failed": rtt["failed"],
        "lost": rtt["lost"], "errors": rtt["errors"],
        "p50_ms": rb.percentile_ms(hist, 0.50), "p99_ms": rb.percentile_ms(hist, 0.99),
        "max_ms": rtt["max_us"] / 1000.0,
        "server_cores": m["server_cores"], "other_cores": m["other_cores"],
        "flood": flood and {k: flood[k] for k in ("written", "connects", "reasons",
                                                    "buffered_at_end")},
    }


def summarise(rb: Any, block: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per phase: medians of p50/p99, the worst max, totals of the flooder's figures."""
    out: dict[str, dict[str, Any]] = {}
    for phase, results in block["rounds"].items():
        if not results:
            continue
        floods = [r["flood"] for r in results if r["flood"]]
        reasons: dict[str, int] = {}
        for f in floods:
            for k, v in f["reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
        out[phase] = {
            "p50_ms": rb.med([r["p50_ms"] for r in results]),
            "p99_ms": rb.med([r["p99_ms"] for r in results]),
            "max_ms": max(r["max_ms"] for r in results),
            "acked": sum(r["acked"] for r in results), "sent": sum(r["sent"] for r in results),
            "failed": sum(r["failed"] + r["lost"] for r in results),
            "server_cores": rb.med([r["server_cores"] for r in results]),
            "other_cores": rb.med([r["other_cores"] for r in results]),
            "written": sum(f["written"] for f in floods) if floods else None,
            "connects": sum(f["connects"] for f in floods) if floods else None,
            "reasons": reasons,
        }
    return out


def render(rb: Any, block: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    prof = block["profile"]
    quiet = summary.get("quiet", {}).get("p99_ms")
    lines = [
        f"Flood ({prof['rounds']} round(s), {prof['duration']:g} s per phase): "
        f"{prof['clients']} clients send acked `user-join` at {prof['rate']}/s in all while "
        "one more client floods; their round trips (p50/p99: median over rounds; max: the "
        "largest of all rounds). Target: p99 within "
        f"{TARGET_RATIO:g}x quiet, max under {TARGET_MAX_MS:g} ms.", "",
        "| phase | acked / sent | p50 ms | p99 ms | p99 / quiet | max ms | target | server "
        "cores | flooder: events written, connections, how they ended |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for phase in PHASES:
        s = summary.get(phase)
        if s is None:
            continue
        ratio = s["p99_ms"] / quiet if quiet and s["p99_ms"] else None
        met = (phase == "quiet" or (ratio is not None and ratio <= TARGET_RATIO)) and \
            s["max_ms"] <= TARGET_MAX_MS
        flood = "–" if s["written"] is None else (
            f"{s['written']:,} in {s['connects']}; "
            + (", ".join(f"{k}: {v}" for k, v in sorted(s["reasons"].items())) or "still open"))
        lines.append(
            f"| {phase} | {s['acked']:,} / {s['sent']:,} | {rb.fmt(s['p50_ms'])} | "
            f"{rb.fmt(s['p99_ms'])} | {rb.fmt(ratio)} | {rb.fmt(s['max_ms'])} | "
            f"{'met' if met else 'NOT met'} | {rb.fmt(s['server_cores'])} | {flood} |")
    lines += ["", "Rest of the machine during the phases (median, cores): " + ", ".join(
        f"{phase} {rb.fmt(s['other_cores'])}" for phase, s in summary.items())]
    return "\n".join(lines) + "\n"
