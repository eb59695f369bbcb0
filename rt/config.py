"""Configuration: one schema, four sources (defaults < INI file < environment < flags).

Every option is declared once, as a field of a frozen section dataclass below: its default
(written as INI text and parsed like any other value), type, help, legacy environment names
and whether it may change on reload. The loader, `print-config`, the shipped INI file and the
SIGHUP diff are all derived from that declaration, so they cannot drift apart.

Importing this module reads no environment and touches no file.

Longer than the other modules because the schema is: every option of every section with
its default, type, help text and environment names, in one place an operator can read
top to bottom (the shipped INI file is rendered from it).
"""

import dataclasses
import ipaddress
import math
import os
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Self
from urllib.parse import urlsplit

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h
DEFAULT_CONFIG_PATH = "/etc/rt-appliance/rt-appliance.ini"


class ConfigError(Exception):
    """Every problem found in one load, each prefixed with where the value came from."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --- value types ---------------------------------------------------------------------------
# A parser gets the raw text and raises ValueError with a message naming the value; the
# loader prefixes the source. Values that may carry credentials are never echoed.


@dataclass(frozen=True)
class Type:
    kind: str  # shown in the shipped INI file
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str  # typed value back to INI text, for print-config
    secret: bool = False


def _split(text: str, separators: str = r"[;,\s]+") -> list[str]:
    return [item for item in re.split(separators, text) if item]


def _join(items: tuple[str, ...]) -> str:
    return ", ".join(items)


def _number_text(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def integer(low: int, high: int | None = None) -> Type:
    def parse(text: str) -> int:
        try:
            n = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if high is not None and not low <= n <= high:
            raise ValueError(f"{text!r} is out of range {low}..{high}")
        if n < low:
            raise ValueError(f"{text!r} is out of range (must be >= {low})")
        return n

    return Type(f"integer {low}..{high}" if high is not None else f"integer >= {low}", parse)


def number(*, above: float | None = None, at_least: float | None = None) -> Type:
    def parse(text: str) -> float:
        try:
            x = float(text.strip())
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise ValueError(f"{text!r} is not a number")
        if above is not None and not x > above:
            raise ValueError(f"{text!r} is out of range (must be > {above:g})")
        if at_least is not None and x < at_least:
            raise ValueError(f"{text!r} is out of range (must be >= {at_least:g})")
        return x

    bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
    return Type(f"number {bound}, fractions allowed", parse, _number_text)


WORKERS_CAP = 16  # `auto` stops here: beyond, the shared broker and SQLite file are the limit


def _workers(text: str) -> int:
    """`auto` is 0 (one per core the process may run on, at most WORKERS_CAP)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        n = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither 'auto' nor a number of workers") from None
    if not 1 <= n <= 64:
        raise ValueError(f"{text!r} is out of range 1..64")
    return n


def worker_count(configured: int) -> int:
    """The number of workers `[server] workers` asks for, `auto` resolved on this box."""
    if configured:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroups)
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, WORKERS_CAP))


def choice(*values: str) -> Type:
    listed = ", ".join(repr(v) for v in values)

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in values:
            raise ValueError(f"{text!r} is not one of {listed}")
        return word

    return Type(f"one of {listed}", parse)


def path(*, required: bool) -> Type:
    def parse(text: str) -> str:
        text = text.strip()
        if required and not text:
            raise ValueError("a path is required")
        return text

    return Type("path" if required else "path or empty", parse)


def _redact_userinfo(url: str) -> str:
    # Greedy up to the last '@': passwords often hold unescaped '/' or '@'.
    return re.sub(r"(//[^/@:]*:).*@", r"\1***@", url)


def _redis_url(text: str) -> str:
    text = text.strip()
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def _http_url(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be empty or an http:// or https:// URL with a host")
    return text.rstrip("/")  # so the relay can append /chat/completions


def _listen(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} must be host:port")
    return text


def _addresses(text: str) -> tuple[str, ...]:
    """IP addresses and networks (CIDR), or * for any."""
    items = tuple(_split(text))
    if "*" in items:
        return ("*",)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return items


def _socketio_path(text: str) -> str:
    text = text.strip()
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    return text.rstrip("/") or "/"  # the route serves it with and without the slash


def _origins(text: str) -> tuple[str, ...]:
    out = []
    for item in _split(text):
        if item != "*":
            try:
                parts = urlsplit(item)
            except ValueError:
                parts = None
            if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                    or parts.path not in ("", "/") or parts.query or parts.fragment):
                raise ValueError(f"{item!r} is not an origin like https://chat.example.com")
            # Browsers send Origin lower-case and without a trailing slash; compare like that.
            item = f"{parts.scheme}://{parts.netloc.lower()}"
        out.append(item)
    if not out:
        raise ValueError("at least one origin (or *) is required")
    return tuple(out)


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


def _algorithms(text: str) -> tuple[str, ...]:
    out = []
    for item in _split(text):
        if item.lower() == "none":
            raise ValueError("'none' is refused: it would accept unsigned tokens")
        if item.upper() not in JWT_ALGORITHMS:
            raise ValueError(f"{item!r} is not one of {' '.join(JWT_ALGORITHMS)}")
        out.append(item.upper())
    if not out:
        raise ValueError("at least one algorithm is required")
    return tuple(out)


def _namespaces(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", item):
            raise ValueError(f"{item!r} is not a namespace (letters, digits, '_' and '-')")
    return tuple(items)


def _sentinel_hosts(text: str) -> tuple[str, ...]:
    items = _split(text, r"\s*,\s*")
    for item in items:
        host, port = item, ""
        if ":" in item and not item.endswith("]"):  # "[::1]" is a host without a port
            host, _, port = item.rpartition(":")
        if not host or (port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"{item!r} is not host or host:port")
    return tuple(items)


TEXT = Type("string", str.strip)
SECRET = Type("secret string", str, secret=True)  # not stripped: the secret is what it is
BOOL = Type("boolean", _bool, lambda b: "true" if b else "false")
POSITIVE = number(above=0)
NON_NEGATIVE = number(at_least=0)
ORIGINS = Type("list of origins separated by ';', ',' or spaces; * = any", _origins, _join)
ADDRESSES = Type("list of IP addresses or networks (CIDR) separated by ',' or spaces; * = any",
                 _addresses, _join)
REDIS_URL = Type("redis://, rediss:// or unix:// URL", _redis_url, _redact_userinfo)
HTTP_URL = Type("empty or http(s) URL", _http_url, _redact_userinfo)


# --- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    section: str
    name: str
    type: Type
    default: str  # INI text
    help: str
    legacy_env: tuple[str, ...]  # older names, read after the generic RT_ name, in this order
    reloadable: bool  # may change on SIGHUP; otherwise a restart is needed

    @property
    def key(self) -> tuple[str, str]:
        return (self.section, self.name)

    @property
    def env(self) -> tuple[str, ...]:
        """Environment names in priority order."""
        return (f"RT_{self.section}_{self.name}".upper(), *self.legacy_env)

    @property
    def secret(self) -> bool:
        return self.type.secret

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def opt(default: str, type_: Type, help: str, *env: str, reload: bool = False) -> Any:
    return field(metadata={"option": (type_, default, help, env, reload)})


@dataclass(frozen=True)
class ServerSettings:
    host: str = opt(
        "127.0.0.1", TEXT, "Address to listen on. 0.0.0.0 or :: listens on every interface.")
    port: int = opt(
        "8080", integer(0, 65535), "TCP port to listen on; 0 picks any free port.")
    socketio_path: str = opt(
        "/ws/socket.io", Type("URL path starting with /", _socketio_path),
        "URL path of the Socket.IO endpoint, served with and without a trailing slash.")
    enable_websocket: bool = opt(
        "true", BOOL, "Offer the websocket transport; false = HTTP long-polling only.",
        "ENABLE_WEBSOCKET_SUPPORT")
    cors_allow_origin: tuple[str, ...] = opt(
        "*", ORIGINS, "Browser origins allowed to connect, e.g. https://chat.example.com.",
        "CORS_ALLOW_ORIGIN", reload=True)
    ping_interval: float = opt(
        "25", POSITIVE, "Seconds between Engine.IO pings.",
        "WEBSOCKET_SERVER_PING_INTERVAL", reload=True)
    ping_timeout: float = opt(
        "20", POSITIVE, "Seconds without an answer to a ping before the client counts as gone.",
        "WEBSOCKET_SERVER_PING_TIMEOUT", reload=True)
    max_message_bytes: int = opt(
        "1000000", integer(1024), "Largest inbound message a client may send, in bytes.",
        reload=True)
    forwarded_allow_ips: tuple[str, ...] = opt(
        "127.0.0.1, ::1", ADDRESSES, "Proxies whose X-Forwarded-For / X-Real-IP are believed: "
        "requests from these addresses count under the client address the proxy names (the "
        "per-address limits, logs). The default fits nginx on the same box; a client "
        "connecting from elsewhere cannot claim an address. * = any (only when no client "
        "can reach the appliance except through the proxy).", "FORWARDED_ALLOW_IPS")
    trust_proxy_headers: bool = opt(
        "false", BOOL, "Believe X-Forwarded-For / X-Real-IP from any address (same as "
        "forwarded_allow_ips = *). Turn on only behind a reverse proxy that sets them, or "
        "clients can claim any address.")
    protocol_logging: bool = opt(
        "false", BOOL, "Log every Engine.IO / Socket.IO packet (very verbose, for debugging).",
        "WEBSOCKET_SERVER_LOGGING")
    websocket_compression: bool = opt(
        "false", BOOL, "Negotiate permessage-deflate on websockets; costs CPU and latency on "
        "small messages.")
    broadcast_usage: bool = opt(
        "true", BOOL, "Send the 'usage' event (models in use) to every connected client.")
    shutdown_timeout: float = opt(
        "10", POSITIVE, "Seconds a graceful shutdown may take before remaining work is dropped.")
    drain_rate: float = opt(
        "500", NON_NEGATIVE, "Sessions disconnected per second when draining on SIGTERM, so "
        "clients reconnect elsewhere without a thundering herd; 0 = all at once.", reload=True)
    workers: int = opt(
        "auto", Type(f"auto (one per core, at most {WORKERS_CAP}) or integer 1..64", _workers,
                     lambda n: str(n) if n else "auto"),
        "Worker processes serving the one port, each on a core of its own. Above one, the "
        "workers share a private broker the appliance starts (on embedded state) or the "
        "configured Redis, and a polling client is served by the worker that holds its "
        "session whichever worker its request reaches.")
    worker_broker: str = opt(
        "", path(required=False), "The broker program the workers share on embedded state; "
        "empty = the valkey-server the appliance ships, else valkey-server or redis-server "
        "(>= 7) on PATH.")
    metrics_listen: str = opt(
        "", Type("empty or host:port", _listen), "Serve /metrics on this separate host:port "
        "only (e.g. 127.0.0.1:9100); empty = on the main listener.")


@dataclass(frozen=True)
class AuthSettings:
    secret_key: str = opt(
        "", SECRET, "Shared secret that verifies HS* tokens (the backend signs with it). "
        "Empty = generated once and kept in data_dir.", "WEBUI_SECRET_KEY")
    api_key: str = opt(
        "", SECRET, "Bearer key of the backend HTTP API (/api/v1). Empty = generated once and "
        "kept in data_dir.", "RT_API_KEY", reload=True)
    trust_token_claims: bool = opt(
        "false", BOOL, "Let a token's name/role claims stand in for a user the directory "
        "lacks; false = unknown users are refused.")
    algorithms: tuple[str, ...] = opt(
        "HS256", Type("list of " + " ".join(JWT_ALGORITHMS), _algorithms, _join),
        "Token algorithms accepted, separated by ',' or spaces. 'none' is always refused.")
    public_key_file: str = opt(
        "", path(required=False), "PEM public key for RS*/ES* tokens; required when such an "
        "algorithm is listed.")
    leeway: float = opt(
        "30", NON_NEGATIVE, "Seconds of clock skew allowed when checking exp.")


@dataclass(frozen=True)
class StateSettings:
    manager: str = opt(
        "", choice("", "redis"), "Empty = single node with embedded state (SQLite in "
        "data_dir); redis = cluster mode with all state in Redis.", "WEBSOCKET_MANAGER")
    data_dir: str = opt(
        "./data", path(required=True), "Directory for the SQLite file and generated secrets "
        "(relative to the working directory).", "RT_DATA_DIR")
    redis_url: str = opt(
        "redis://127.0.0.1:6379/0", REDIS_URL, "Redis used when manager = redis. With "
        "sentinel_hosts the URL's host is the master name.", "WEBSOCKET_REDIS_URL", "REDIS_URL")
    redis_cluster: bool = opt(
        "false", BOOL, "redis_url points at a Redis Cluster.",
        "WEBSOCKET_REDIS_CLUSTER", "REDIS_CLUSTER")
    sentinel_hosts: tuple[str, ...] = opt(
        "", Type("comma-separated host or host:port", _sentinel_hosts, ",".join),
        "Redis Sentinel hosts (IPv6 in brackets); empty = no Sentinel.",
        "WEBSOCKET_SENTINEL_HOSTS")
    sentinel_port: int = opt(
        "26379", integer(1, 65535), "Port of the Sentinel hosts listed without one.",
        "WEBSOCKET_SENTINEL_PORT")
    key_prefix: str = opt(
        "open-webui", TEXT, "Prefix of every Redis key and channel.", "REDIS_KEY_PREFIX")
    redis_timeout: float = opt(
        "3", POSITIVE, "Seconds one Redis operation may take in all, waiting for a "
        "connection and retries included; a slower or silent Redis then fails the request "
        "(API 503, an error in the event's ack, readyz 503) instead of holding it. Keep it "
        "well above five round trips to Redis: a new connection's first command needs that "
        "many.")
    node_ttl: float = opt(
        "12", POSITIVE, "Seconds after which the sessions of a node that stopped reporting "
        "vanish (Redis). A node renews its lease every third of it, in one command.")
    last_active_flush_interval: float = opt(
        "5", POSITIVE, "Seconds between writes of users' last-active times (heartbeats are "
        "coalesced).")


@dataclass(frozen=True)
class LimitsSettings:
    typing_per_second: float = opt(
        "5", POSITIVE, "Sustained rate of channel typing events per session.", reload=True)
    typing_burst: int = opt(
        "10", integer(1), "Typing events a session may send at once above that rate.",
        reload=True)
    usage_ttl: float = opt(
        "3", POSITIVE, "Seconds a model stays in use after a session's last usage event.",
        reload=True)
    usage_models_per_connection: int = opt(
        "8", integer(1), "Models one session may hold in the usage set at once; a usage "
        "event for another model is refused (rate_limited) until one expires. A tab uses "
        "one model at a time, a multi-model chat a few.", reload=True)
    usage_models_max: int = opt(
        "1000", integer(1), "Distinct models in the usage set (cluster-wide in Redis mode); "
        "a usage event naming a new model beyond it is refused (rate_limited). Bounds the "
        "'usage' list every client receives.", reload=True)
    chat_reads_per_user: int = opt(
        "5000", integer(1), "Chat read markers (events:chat last_read_at) kept per user; "
        "marking one more chat removes the user's oldest marker.", reload=True)
    call_timeout_max: float = opt(
        "60", POSITIVE, "Default and upper bound of timeout_s of POST /api/v1/call, in seconds.",
        reload=True)
    max_connections: int = opt(
        "10000", integer(1), "Sessions this node accepts in all; more are refused "
        "(rate_limited).", reload=True)
    max_connections_per_ip: int = opt(
        "200", integer(1), "Sessions from one client address (behind a proxy, the address "
        "it names: see [server] forwarded_allow_ips).", reload=True)
    connects_per_second_per_ip: float = opt(
        "20", POSITIVE, "Sustained rate of new connections from one address; checked before "
        "the token is verified, so a flood costs no signature checks.", reload=True)
    connect_burst_per_ip: int = opt(
        "50", integer(1), "New connections one address may open at once above that rate.",
        reload=True)
    events_per_second: float = opt(
        "100", POSITIVE, "Sustained rate of events one session may send (rate_limited above).",
        reload=True)
    events_burst: int = opt(
        "200", integer(1), "Events one session may send at once above that rate.", reload=True)
    inbound_packets_per_second: float = opt(
        "100", POSITIVE, "Packets one session may send per second, sustained (events, "
        "attachments, pongs; never less than events_per_second); above it the appliance "
        "stops reading the socket until the budget refills: the client is slowed, nothing is "
        "refused.", reload=True)
    inbound_packet_burst: int = opt(
        "200", integer(1), "Packets one session may send at once above that rate (never less "
        "than events_burst).", reload=True)
    inbound_bytes_per_second: int = opt(
        "1048576", integer(1024), "Bytes one session may send per second, sustained (slowed "
        "above it, as for packets).", reload=True)
    inbound_bytes_burst: int = opt(
        "4194304", integer(1024), "Bytes one session may send at once above that rate.",
        reload=True)
    flood_close_after: float = opt(
        "10", NON_NEGATIVE, "Seconds a session may stay at its inbound budget, sending without "
        "waiting for answers, before it is closed as a flood (websocket close 1008 'inbound "
        "flood'); 0 = never.", reload=True)
    max_rooms_per_connection: int = opt(
        "2000", integer(1), "Rooms one session may be in (its channels, notes, documents).",
        reload=True)
    max_documents_per_connection: int = opt(
        "50", integer(1), "Yjs documents one session may have joined at once.", reload=True)
    max_outbound_bytes: int = opt(
        "8388608", integer(65536), "Unsent bytes a websocket may have queued before the "
        "client counts as too slow and is disconnected.", reload=True)
    api_max_body_bytes: int = opt(
        "4194304", integer(1024), "Largest HTTP API request body, in bytes (413 above).",
        reload=True)
    api_requests_per_second: float = opt(
        "500", POSITIVE, "Sustained HTTP API request rate per client address (429 above).",
        reload=True)
    api_burst: int = opt(
        "1000", integer(1), "HTTP API requests one address may send at once above that rate.",
        reload=True)


@dataclass(frozen=True)
class DocumentsSettings:
    namespaces: tuple[str, ...] = opt(
        "note", Type("list of names separated by ',' or spaces", _namespaces, _join),
        "Allowed document id namespaces (ids look like note:<id>); empty = every id refused.",
        reload=True)
    compaction_threshold: int = opt(
        "500", integer(2), "Updates in a document's log before the oldest are merged into one.",
        reload=True)
    max_update_bytes: int = opt(
        "1000000", integer(1), "Largest single Yjs update, in bytes.", reload=True)
    max_document_bytes: int = opt(
        "50000000", integer(1), "Largest stored document, in bytes; updates beyond it are "
        "refused.", reload=True)
    content_debounce: float = opt(
        "2", NON_NEGATIVE, "Seconds to wait before storing an editor's rendered content; "
        "0 = store every time.", reload=True)


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str = opt(
        "", HTTP_URL, "OpenAI-compatible API for the chat relay, e.g. "
        "http://127.0.0.1:11434/v1; empty = relay disabled.", reload=True)
    api_key: str = opt(
        "", SECRET, "Bearer key sent to the upstream API.", reload=True)
    connect_timeout: float = opt(
        "10", POSITIVE, "Seconds to connect to the upstream and get its response headers.",
        reload=True)
    idle_timeout: float = opt(
        "60", POSITIVE, "Seconds without data from the upstream before a stream fails.",
        reload=True)
    emit_interval: float = opt(
        "0.05", NON_NEGATIVE, "Seconds between chat:completion emits of one stream; deltas in "
        "between are coalesced. 0 = emit every delta.", reload=True)
    max_streams_per_user: int = opt(
        "4", integer(1), "Concurrent relayed streams per user.", reload=True)
    max_streams: int = opt(
        "64", integer(1), "Concurrent relayed streams on this node.", reload=True)


@dataclass(frozen=True)
class OpenWebuiSettings:
    url: str = opt(
        "", HTTP_URL, "Base URL of an unmodified open-webui whose users, rights and notes "
        "the appliance serves (e.g. http://127.0.0.1:8080): identities, channel, note and "
        "chat access are asked of its HTTP API with each tab's own token, note content is "
        "written back through it. Empty = the appliance's own directory (the HTTP API "
        "registers users, channels and notes).", "OPENWEBUI_URL")
    request_timeout: float = opt(
        "5", POSITIVE, "Seconds one request to open-webui may take; slower counts as "
        "unreachable (connect refused with 'unavailable').")
    cache_ttl: float = opt(
        "30", POSITIVE, "Seconds an answer of open-webui (who a token is, what it may read) "
        "is reused before it is asked again.")
    cache_size: int = opt(
        "10000", integer(1), "Answers of open-webui kept in the cache at most (the oldest "
        "are dropped first).")
    reverify_interval: float = opt(
        "30", POSITIVE, "Seconds between re-verifications of every live socket's token "
        "(revoked or signed-out tokens lose their socket within this time).")
    unbound_per_ip: int = opt(
        "20", integer(1), "Sockets without a user yet (opened on the sign-in page) allowed "
        "per client address.")
    unbound_max: int = opt(
        "2000", integer(1), "Sockets without a user yet allowed on this node in all.",)
    pubsub: bool = opt(
        "true", BOOL, "In Redis mode, also speak python-socketio's own pub/sub protocol with "
        "open-webui's backend (its emits, calls and room changes reach our browsers).")
    pubsub_channel: str = opt(
        "socketio", TEXT, "python-socketio's pub/sub channel (not prefixed, as in "
        "open-webui).")
    room_channels: bool = opt(
        "true", BOOL, "open-webui publishes emits for one room on <pubsub_channel>#/#<room> "
        "(its default room-channel manager); subscribe to those for rooms with local "
        "members. false = everything on pubsub_channel (stock AsyncRedisManager).",
        "WEBSOCKET_REDIS_ROOM_CHANNELS")
    mirror_emits: bool = opt(
        "true", BOOL, "With pubsub: also publish what the appliance emits where open-webui's "
        "own socket server listens, so tabs still connected to open-webui (a deployment "
        "moving over) get it too. Costs one more Redis publish per emit; false when no "
        "browser uses open-webui's socket.")


@dataclass(frozen=True)
class RecoverySettings:
    enabled: bool = opt(
        "true", BOOL, "Socket.IO connection state recovery: a tab that reconnects within "
        "max_disconnection gets its session (sid, rooms, user) and every event it missed, "
        "on any node of the cluster.")
    max_disconnection: float = opt(
        "120", POSITIVE, "Seconds a disconnected session stays recoverable.")
    max_packets: int = opt(
        "1000", integer(1), "Events one session may have missed; more and its recovery fails "
        "(a new session).")
    max_bytes: int = opt(
        "1048576", integer(1024), "Bytes of events one session may have missed; more and "
        "its recovery fails.")
    max_packet_bytes: int = opt(
        "262144", integer(1024), "Largest event kept for recovery; a larger one makes the "
        "recovery of the sessions it was sent to fail.")
    log_entries: int = opt(
        "100000", integer(100), "Events kept for recovery in all (the cluster's log); the "
        "oldest are dropped first.")
    log_bytes: int = opt(
        "67108864", integer(65536), "Bytes of events kept for recovery in all (embedded "
        "state; on Redis log_entries x max_packet_bytes bounds it).")
    skip_user_agents: str = opt(
        "Python/ python-", TEXT, "User-Agent prefixes (separated by spaces) of clients "
        "that cannot take the offset argument of recoverable events (python-socketio): "
        "their sessions are not recoverable and their events carry no offset.")


@dataclass(frozen=True)
class LogSettings:
    level: str = opt(
        "info", choice("debug", "info", "warning", "error"), "Log level.", reload=True)


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "state": StateSettings,
    "limits": LimitsSettings,
    "documents": DocumentsSettings,
    "upstream": UpstreamSettings,
    "openwebui": OpenWebuiSettings,
    "recovery": RecoverySettings,
    "log": LogSettings,
}

OPTIONS: tuple[Option, ...] = tuple(
    Option(section, f.name, *f.metadata["option"])
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
)
_BY_KEY = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The effective configuration: read-only, typed, one attribute per section."""

    server: ServerSettings
    auth: AuthSettings
    state: StateSettings
    limits: LimitsSettings
    documents: DocumentsSettings
    upstream: UpstreamSettings
    openwebui: OpenWebuiSettings
    recovery: RecoverySettings
    log: LogSettings
    _sources: Mapping[tuple[str, str], str] = field(repr=False, compare=False)

    def value(self, section: str, name: str) -> Any:
        return getattr(getattr(self, section), name)

    def source(self, section: str, name: str) -> str:
        """'default', 'FILE:LINE', 'env NAME', 'flag --name' or whatever replace() was given."""
        return self._sources[(section, name)]

    def replace(self, section: str, name: str, value: Any, source: str = "replaced") -> Self:
        """A copy with one (already typed) value changed, e.g. a secret generated at start-up."""
        if (section, name) not in _BY_KEY:
            raise KeyError(f"unknown option [{section}] {name}")
        part = dataclasses.replace(getattr(self, section), **{name: value})
        sources = MappingProxyType({**self._sources, (section, name): source})
        return dataclasses.replace(self, **{section: part, "_sources": sources})


# --- loading -------------------------------------------------------------------------------


def _where(option: Option, source: str) -> str:
    if source.startswith(("env ", "flag ")):
        return source
    return f"{source} [{option.section}] {option.name}"  # "file.ini:12 [server] port"


# An inline comment needs whitespace before its ';' or '#', so values like "a;b" survive.
_INLINE_COMMENT = re.compile(r"\s[;#]")
# what an option name can look like; anything else is not echoed (it may be a secret)
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _read_ini(path: str, errors: list[str]) -> Iterator[tuple[Option, str, str]]:
    """Yield (option, raw value, source) per valid line; append problems to errors.

    A generator, so that a caller parsing each value as it comes gets all the file's
    errors in line order.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerate an editor's BOM
            lines = f.read().splitlines()
    except FileNotFoundError:
        errors.append(f"{path}: config file not found")
        return
    except OSError as e:
        errors.append(f"{path}: cannot read config file: {e.strerror}")
        return
    except UnicodeDecodeError:
        errors.append(f"{path}: config file is not UTF-8")
        return

    first_line: dict[tuple[str, str], int] = {}
    section: str | None = None
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        comment = _INLINE_COMMENT.search(line)
        indented = line[:1].isspace()
        line = (line[: comment.start()] if comment else line).strip()
        if not line or line[0] in ";#":
            continue
        if indented:
            # a value wrapped onto the next line (often a long secret): refused, not echoed
            errors.append(f"{where}: continuation lines are not supported; "
                          "put the whole value on the option's line")
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in SECTIONS:
                errors.append(f"{where}: unknown section [{section}]")
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not name:
            # The line itself is not echoed: it may be a mistyped secret.
            errors.append(f"{where}: expected 'name = value' or '[section]'")
        elif section is None:
            errors.append(f"{where}: {name!r} is set before any [section]")
        elif section not in SECTIONS:
            pass  # the section header was reported once; its lines would only add noise
        elif not _OPTION_NAME.fullmatch(name):
            # not echoed: "secret_key abc==" (the '=' forgotten) would show the secret
            errors.append(f"{where}: expected 'name = value' (an option name is one word)")
        elif (section, name) not in _BY_KEY:
            errors.append(f"{where} [{section}] {name}: unknown option")
        elif (section, name) in first_line:
            errors.append(f"{where} [{section}] {name}: duplicate option "
                          f"(first set on line {first_line[section, name]})")
        else:
            first_line[section, name] = lineno
            yield _BY_KEY[section, name], value.strip(), where


def load_settings(
    config_path: str | None,
    environ: Mapping[str, str],
    overrides: dict[tuple[str, str], str] | None = None,
) -> Settings:
    """Merge defaults < INI file < environment < overrides (command-line flags).

    config_path None means DEFAULT_CONFIG_PATH if it exists; an explicit path must exist.
    Every value given is parsed, even one a later source overrides, so a broken file is
    reported now rather than when the environment that hides it goes away. Raises
    ConfigError listing every problem.
    """
    errors: list[str] = []
    chosen: dict[tuple[str, str], tuple[Any, str]] = {}

    def take(option: Option, text: str, source: str) -> None:
        try:
            chosen[option.key] = (option.type.parse(text), source)
        except ValueError as e:
            errors.append(f"{_where(option, source)}: {e}")

    for option in OPTIONS:
        take(option, option.default, "default")
    if config_path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        config_path = DEFAULT_CONFIG_PATH
    if config_path is not None:
        for option, text, source in _read_ini(config_path, errors):
            take(option, text, source)
    for option in OPTIONS:
        # An empty variable counts as set, like os.environ.get() in the original system.
        name = next((n for n in option.env if n in environ), None)
        if name is not None:
            take(option, environ[name], f"env {name}")
    for key, text in (overrides or {}).items():
        option = _BY_KEY[key]  # a KeyError here is a bug in the caller, not a config error
        take(option, text, f"flag {option.flag}")

    if not errors:
        _apply_profiles(chosen)
        _check_together(chosen, errors)
    if errors:
        raise ConfigError(errors)
    sections = {
        section: cls(**{o.name: chosen[o.key][0] for o in OPTIONS if o.section == section})
        for section, cls in SECTIONS.items()
    }
    return Settings(**sections, _sources=MappingProxyType({k: s for k, (_, s) in chosen.items()}))


# Defaults that follow open-webui 0.12.4 when the appliance stands in for its socket
# server ([openwebui] url set): its 16 MiB inbound message limit (large notes) and its 2 MiB
# limit per Yjs document. Only options nobody set are changed.
OPENWEBUI_PROFILE: dict[tuple[str, str], str] = {
    ("server", "max_message_bytes"): str(16 * 1024 * 1024),
    ("documents", "max_document_bytes"): str(2 * 1024 * 1024),
    ("documents", "max_update_bytes"): str(2 * 1024 * 1024),
}


def _apply_profiles(chosen: dict[tuple[str, str], tuple[Any, str]]) -> None:
    if not chosen["openwebui", "url"][0]:
        return
    for key, text in OPENWEBUI_PROFILE.items():
        if chosen[key][1] == "default":
            chosen[key] = (_BY_KEY[key].type.parse(text), "default (open-webui profile)")


def _check_together(chosen: dict[tuple[str, str], tuple[Any, str]], errors: list[str]) -> None:
    """Rules spanning several options; blamed on the option that makes the others necessary."""
    algorithms, algorithms_source = chosen["auth", "algorithms"]
    key_file, key_file_source = chosen["auth", "public_key_file"]
    asymmetric = [a for a in algorithms if not a.startswith("HS")]
    if asymmetric and not key_file:
        where = _where(_BY_KEY["auth", "algorithms"], algorithms_source)
        errors.append(f"{where}: {asymmetric[0]} needs [auth] public_key_file")
    elif asymmetric and not os.path.isfile(key_file):
        where = _where(_BY_KEY["auth", "public_key_file"], key_file_source)
        errors.append(f"{where}: {key_file!r} is not a file")


# --- output --------------------------------------------------------------------------------


def describe(settings: Settings) -> str:
    """print-config: every effective value with its source, secrets redacted."""
    rows = []
    for o in OPTIONS:
        value = settings.value(o.section, o.name)
        text = ("***" if value else "") if o.secret else o.type.format(value)
        rows.append((f"[{o.section}] {o.name} = {text}", settings.source(o.section, o.name)))
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}    ({source})" for left, source in rows)


_HEADER = """\
rt-appliance configuration. Every option is listed with its default.

Precedence: built-in defaults < this file < environment < command-line flags. Every
option can also be set with the environment variable RT_<SECTION>_<NAME>, e.g.
RT_SERVER_PORT; older variable names listed with an option are read after it, in order.

Syntax: [section] headers and "name = value" lines. Comments start with ; or # at the
beginning of a line, or after whitespace within a line (so a;b is a value). Unknown
sections and options are errors. Options marked "Applies on reload" take effect on SIGHUP.
"""


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 90, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False)


def render_default_ini() -> str:
    """The shipped conf/rt-appliance.ini (a test keeps the file equal to this)."""
    lines = [("# " + line).rstrip() for line in _HEADER.splitlines()]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for o in OPTIONS:
            if o.section == section:
                when = "Applies on reload." if o.reloadable else "Needs a restart."
                lines += ["", *_comment(o.help), *_comment(f"Type: {o.type.kind}."),
                          *_comment(f"Env: {', '.join(o.env)}. {when}"),
                          f"{o.name} = {o.default}".rstrip()]
    return "\n".join(lines) + "\n"


def reload_diff(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """Options that differ, as "section.name": (applied live, needing a restart)."""
    applied: list[str] = []
    need_restart: list[str] = []
    for o in OPTIONS:
        if old.value(o.section, o.name) != new.value(o.section, o.name):
            (applied if o.reloadable else need_restart).append(f"{o.section}.{o.name}")
    return applied, need_restart
