"""The configuration layer: schema, sources and their precedence, errors, output."""

import dataclasses
import os
import re
from pathlib import Path

import pytest

from rt import config
from rt.config import (
    EXIT_CONFIG,
    OPTIONS,
    ConfigError,
    describe,
    load_settings,
    reload_diff,
    render_default_ini,
)

ROOT = Path(__file__).resolve().parents[2]
NO_FILE = os.devnull  # an empty INI: defaults only, whatever /etc holds


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch, tmp_path):
    # Keep the host's /etc/rt-appliance out of every test.
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent" / "rt.ini"))


@pytest.fixture
def ini(tmp_path, monkeypatch):
    """Write rt-appliance.ini in a temporary working directory; returns the relative name."""
    monkeypatch.chdir(tmp_path)

    def write(text: str) -> str:
        Path("rt-appliance.ini").write_text(text, encoding="utf-8")
        return "rt-appliance.ini"

    return write


def errors_of(config_path, environ=None, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path, environ or {}, overrides)
    return caught.value.errors


# --- defaults ------------------------------------------------------------------------------

EXPECTED_DEFAULTS = {
    ("server", "host"): "127.0.0.1",
    ("server", "port"): 8080,
    ("server", "socketio_path"): "/ws/socket.io",
    ("server", "enable_websocket"): True,
    ("server", "cors_allow_origin"): ("*",),
    ("server", "ping_interval"): 25.0,
    ("server", "ping_timeout"): 20.0,
    ("server", "max_message_bytes"): 1_000_000,
    ("server", "forwarded_allow_ips"): ("127.0.0.1", "::1"),
    ("server", "trust_proxy_headers"): False,
    ("server", "protocol_logging"): False,
    ("server", "websocket_compression"): False,
    ("server", "broadcast_usage"): True,
    ("server", "shutdown_timeout"): 10.0,
    ("server", "drain_rate"): 500.0,
    ("server", "workers"): 0,  # auto
    ("server", "worker_broker"): "",
    ("server", "metrics_listen"): "",
    ("auth", "secret_key"): "",
    ("auth", "api_key"): "",
    ("auth", "trust_token_claims"): False,
    ("auth", "algorithms"): ("HS256",),
    ("auth", "public_key_file"): "",
    ("auth", "leeway"): 30.0,
    ("state", "manager"): "",
    ("state", "data_dir"): "./data",
    ("state", "redis_url"): "redis://127.0.0.1:6379/0",
    ("state", "redis_cluster"): False,
    ("state", "sentinel_hosts"): (),
    ("state", "sentinel_port"): 26379,
    ("state", "key_prefix"): "open-webui",
    ("state", "redis_timeout"): 3.0,
    ("state", "node_ttl"): 12.0,
    ("state", "last_active_flush_interval"): 5.0,
    ("limits", "typing_per_second"): 5.0,
    ("limits", "typing_burst"): 10,
    ("limits", "usage_ttl"): 3.0,
    ("limits", "usage_models_per_connection"): 8,
    ("limits", "usage_models_max"): 1000,
    ("limits", "chat_reads_per_user"): 5000,
    ("limits", "call_timeout_max"): 60.0,
    ("limits", "max_connections"): 10000,
    ("limits", "max_connections_per_ip"): 200,
    ("limits", "connects_per_second_per_ip"): 20.0,
    ("limits", "connect_burst_per_ip"): 50,
    ("limits", "events_per_second"): 100.0,
    ("limits", "events_burst"): 200,
    ("limits", "inbound_packets_per_second"): 100.0,
    ("limits", "inbound_packet_burst"): 200,
    ("limits", "inbound_bytes_per_second"): 1048576,
    ("limits", "inbound_bytes_burst"): 4194304,
    ("limits", "flood_close_after"): 10.0,
    ("limits", "max_rooms_per_connection"): 2000,
    ("limits", "max_documents_per_connection"): 50,
    ("limits", "max_outbound_bytes"): 8388608,
    ("limits", "api_max_body_bytes"): 4194304,
    ("limits", "api_requests_per_second"): 500.0,
    ("limits", "api_burst"): 1000,
    ("documents", "namespaces"): ("note",),
    ("documents", "compaction_threshold"): 500,
    ("documents", "max_update_bytes"): 1_000_000,
    ("documents", "max_document_bytes"): 50_000_000,
    ("documents", "content_debounce"): 2.0,
    ("upstream", "base_url"): "",
    ("upstream", "api_key"): "",
    ("upstream", "connect_timeout"): 10.0,
    ("upstream", "idle_timeout"): 60.0,
    ("upstream", "emit_interval"): 0.05,
    ("upstream", "max_streams_per_user"): 4,
    ("upstream", "max_streams"): 64,
    ("openwebui", "url"): "",
    ("openwebui", "request_timeout"): 5.0,
    ("openwebui", "cache_ttl"): 30.0,
    ("openwebui", "cache_size"): 10000,
    ("openwebui", "reverify_interval"): 30.0,
    ("openwebui", "unbound_per_ip"): 20,
    ("openwebui", "unbound_max"): 2000,
    ("openwebui", "pubsub"): True,
    ("openwebui", "pubsub_channel"): "socketio",
    ("openwebui", "room_channels"): True,
    ("openwebui", "mirror_emits"): True,
    ("recovery", "enabled"): True,
    ("recovery", "max_disconnection"): 120.0,
    ("recovery", "max_packets"): 1000,
    ("recovery", "max_bytes"): 1048576,
    ("recovery", "max_packet_bytes"): 262144,
    ("recovery", "log_entries"): 100000,
    ("recovery", "log_bytes"): 67108864,
    ("recovery", "skip_user_agents"): "Python/ python-",
    ("log", "level"): "info",
}


def test_defaults_are_typed_and_sourced():
    s = load_settings(None, {})
    assert {o.key for o in OPTIONS} == set(EXPECTED_DEFAULTS)
    for (section, name), expected in EXPECTED_DEFAULTS.items():
        value = s.value(section, name)
        assert value == expected and type(value) is type(expected), (section, name, value)
        assert s.source(section, name) == "default"
    assert s.server.port == 8080 and s.auth.secret_key == ""


def test_exit_code_is_ex_config():
    assert EXIT_CONFIG == 78


def test_default_path_is_used_when_it_exists(tmp_path, monkeypatch):
    system = tmp_path / "etc.ini"
    system.write_text("[server]\nport = 9\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(system))
    s = load_settings(None, {})
    assert s.server.port == 9
    assert s.source("server", "port") == f"{system}:2"


def test_settings_are_read_only():
    s = load_settings(NO_FILE, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server = None  # type: ignore[misc]


def test_replace_returns_a_copy_with_its_source():
    s = load_settings(NO_FILE, {})
    t = s.replace("auth", "secret_key", "k" * 32, source="generated data/secret_key")
    assert t.auth.secret_key == "k" * 32
    assert t.source("auth", "secret_key") == "generated data/secret_key"
    assert s.auth.secret_key == "" and s.source("auth", "secret_key") == "default"
    assert t.server == s.server
    with pytest.raises(KeyError):
        s.replace("auth", "nope", "x")


# --- sources ---------------------------------------------------------------------------------


def test_ini_overrides_defaults(ini):
    path = ini(
        "# full-line comment\n"
        "; another\n"
        "\n"
        "[server]\n"
        "port = 9000\n"
        "enable_websocket = off\n"
        "cors_allow_origin = https://a.example; https://B.example/\n"
        "[state]\n"
        "sentinel_hosts = s1, s2:26380 ,[::1]:5000\n"
        "[auth]\n"
        "algorithms = hs256 HS512\n"
    )
    s = load_settings(path, {})
    assert s.server.port == 9000 and s.source("server", "port") == "rt-appliance.ini:5"
    assert s.server.enable_websocket is False
    assert s.server.cors_allow_origin == ("https://a.example", "https://b.example")
    assert s.state.sentinel_hosts == ("s1", "s2:26380", "[::1]:5000")
    assert s.auth.algorithms == ("HS256", "HS512")
    assert s.source("server", "host") == "default"


def test_env_legacy_names():
    env = {
        "ENABLE_WEBSOCKET_SUPPORT": "False",
        "CORS_ALLOW_ORIGIN": "https://a.example;https://b.example",
        "WEBSOCKET_SERVER_PING_INTERVAL": "0.5",
        "WEBSOCKET_SERVER_PING_TIMEOUT": "0.25",
        "WEBSOCKET_SERVER_LOGGING": "yes",
        "WEBUI_SECRET_KEY": "the-secret",
        "RT_API_KEY": "the-api-key",
        "WEBSOCKET_MANAGER": "Redis",
        "RT_DATA_DIR": "/var/lib/rt",
        "WEBSOCKET_REDIS_CLUSTER": "1",
        "WEBSOCKET_SENTINEL_HOSTS": "a,b:1",
        "WEBSOCKET_SENTINEL_PORT": "26000",
        "REDIS_KEY_PREFIX": "owui",
    }
    s = load_settings(NO_FILE, env)
    assert s.server.enable_websocket is False
    assert s.server.cors_allow_origin == ("https://a.example", "https://b.example")
    assert (s.server.ping_interval, s.server.ping_timeout) == (0.5, 0.25)
    assert s.server.protocol_logging is True
    assert (s.auth.secret_key, s.auth.api_key) == ("the-secret", "the-api-key")
    assert s.state.manager == "redis"
    assert s.state.data_dir == "/var/lib/rt"
    assert s.state.redis_cluster is True
    assert s.state.sentinel_hosts == ("a", "b:1") and s.state.sentinel_port == 26000
    assert s.state.key_prefix == "owui"
    assert s.source("auth", "secret_key") == "env WEBUI_SECRET_KEY"
    assert s.source("state", "data_dir") == "env RT_DATA_DIR"


@pytest.mark.parametrize(("env", "url", "source"), [
    ({"REDIS_URL": "redis://fallback/1"}, "redis://fallback/1", "env REDIS_URL"),
    ({"REDIS_URL": "redis://fallback/1", "WEBSOCKET_REDIS_URL": "rediss://ws/2"},
     "rediss://ws/2", "env WEBSOCKET_REDIS_URL"),
    ({"REDIS_URL": "redis://fallback/1", "WEBSOCKET_REDIS_URL": "rediss://ws/2",
      "RT_STATE_REDIS_URL": "unix:///run/redis.sock"},
     "unix:///run/redis.sock", "env RT_STATE_REDIS_URL"),
])
def test_env_redis_url_order(env, url, source):
    s = load_settings(NO_FILE, env)
    assert (s.state.redis_url, s.source("state", "redis_url")) == (url, source)


def test_env_redis_cluster_falls_back_to_redis_cluster():
    s = load_settings(NO_FILE, {"REDIS_CLUSTER": "true"})
    assert s.state.redis_cluster is True
    assert s.source("state", "redis_cluster") == "env REDIS_CLUSTER"


def test_env_generic_names_win_over_legacy():
    s = load_settings(NO_FILE, {
        "RT_SERVER_PORT": "7000",
        "RT_AUTH_SECRET_KEY": "generic",
        "WEBUI_SECRET_KEY": "legacy",
        "RT_LOG_LEVEL": "DEBUG",
    })
    assert s.server.port == 7000 and s.source("server", "port") == "env RT_SERVER_PORT"
    assert s.auth.secret_key == "generic"
    assert s.source("auth", "secret_key") == "env RT_AUTH_SECRET_KEY"
    assert s.log.level == "debug"


def test_env_sets_the_hostile_client_limits():
    s = load_settings(NO_FILE, {"RT_LIMITS_USAGE_MODELS_PER_CONNECTION": "2",
                                "RT_LIMITS_USAGE_MODELS_MAX": "50",
                                "RT_LIMITS_CHAT_READS_PER_USER": "10"})
    assert (s.limits.usage_models_per_connection, s.limits.usage_models_max,
            s.limits.chat_reads_per_user) == (2, 50, 10)
    assert s.source("limits", "usage_models_max") == "env RT_LIMITS_USAGE_MODELS_MAX"


def test_empty_env_variable_counts_as_set(ini):
    # As with os.environ.get() in the original system: WEBSOCKET_MANAGER= means single node.
    s = load_settings(ini("[state]\nmanager = redis\n"), {"WEBSOCKET_MANAGER": ""})
    assert s.state.manager == ""
    assert s.source("state", "manager") == "env WEBSOCKET_MANAGER"


def test_flag_overrides():
    s = load_settings(NO_FILE, {"RT_SERVER_PORT": "1"},
                      {("server", "port"): "8443", ("state", "data_dir"): "/srv/rt"})
    assert s.server.port == 8443 and s.source("server", "port") == "flag --port"
    assert s.state.data_dir == "/srv/rt" and s.source("state", "data_dir") == "flag --data-dir"
    with pytest.raises(KeyError):
        load_settings(NO_FILE, {}, {("server", "nope"): "1"})


def test_full_precedence_chain(ini):
    path = ini("[server]\nport = 1\nhost = 10.0.0.1\nping_interval = 7\n")
    env = {"RT_SERVER_PORT": "2", "WEBSOCKET_SERVER_PING_INTERVAL": "8"}
    s = load_settings(path, env, {("server", "port"): "3"})
    assert (s.server.port, s.source("server", "port")) == (3, "flag --port")
    assert (s.server.ping_interval, s.source("server", "ping_interval")) == (
        8.0, "env WEBSOCKET_SERVER_PING_INTERVAL")
    assert (s.server.host, s.source("server", "host")) == ("10.0.0.1", "rt-appliance.ini:3")
    assert (s.server.socketio_path, s.source("server", "socketio_path")) == (
        "/ws/socket.io", "default")
    s = load_settings(path, env)
    assert (s.server.port, s.source("server", "port")) == (2, "env RT_SERVER_PORT")
    s = load_settings(path, {})
    assert (s.server.port, s.source("server", "port")) == (1, "rt-appliance.ini:2")


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), ("Yes", True), ("on", True), ("1", True),
    ("false", False), ("No", False), ("OFF", False), ("0", False), (" false ", False),
])
def test_booleans(text, expected):
    assert load_settings(NO_FILE, {"RT_SERVER_BROADCAST_USAGE": text}).server.broadcast_usage \
        is expected


def test_fractional_seconds(ini):
    s = load_settings(ini("[server]\nping_interval = 0.5\nping_timeout = 0.25\n"), {})
    assert (s.server.ping_interval, s.server.ping_timeout) == (0.5, 0.25)
    assert load_settings(NO_FILE, {"RT_UPSTREAM_EMIT_INTERVAL": "0"}).upstream.emit_interval == 0


def test_inline_comments_need_whitespace_before_them(ini):
    s = load_settings(ini(
        "[state]\n"
        "key_prefix = a;b\n"
        "data_dir = /srv/a#b   # where the data lives\n"
        "[auth]\n"
        "secret_key =                   ; WEBUI_SECRET_KEY\n"
        "api_key = k;ey ; comment\n"
        "[server] ; comment after a header\n"
        "port = 81 ;comment\n"
    ), {})
    assert s.state.key_prefix == "a;b"
    assert s.state.data_dir == "/srv/a#b"
    assert s.auth.secret_key == ""
    assert s.auth.api_key == "k;ey"
    assert s.server.port == 81


def test_socketio_path_loses_its_trailing_slash():
    s = load_settings(NO_FILE, {"RT_SERVER_SOCKETIO_PATH": "/rt/socket.io/"})
    assert s.server.socketio_path == "/rt/socket.io"


def test_asymmetric_algorithm_with_key_file(ini, tmp_path):
    (tmp_path / "key.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    s = load_settings(ini("[auth]\nalgorithms = RS256, ES256\npublic_key_file = key.pem\n"), {})
    assert s.auth.algorithms == ("RS256", "ES256")
    assert s.auth.public_key_file == "key.pem"


def test_upstream_base_url_is_normalised():
    s = load_settings(NO_FILE, {"RT_UPSTREAM_BASE_URL": "http://127.0.0.1:11434/v1/"})
    assert s.upstream.base_url == "http://127.0.0.1:11434/v1"


# --- errors ----------------------------------------------------------------------------------

IN_FILE_ERRORS = [
    ("[server]\nport = 1\n[nope]\nx = 1\n", "rt-appliance.ini:3: unknown section [nope]"),
    ("[server]\nprot = 1\n", "rt-appliance.ini:2 [server] prot: unknown option"),
    ("[server]\nport = 1\n\nport = 2\n",
     "rt-appliance.ini:4 [server] port: duplicate option (first set on line 2)"),
    ("[server]\nport 8080\n", "rt-appliance.ini:2: expected 'name = value' or '[section]'"),
    ("port = 1\n", "rt-appliance.ini:1: 'port' is set before any [section]"),
    ("# comment\n" * 10 + "[server]\nport = abc\n",
     "rt-appliance.ini:12 [server] port: 'abc' is not an integer"),
    ("[server]\nport = 70000\n",
     "rt-appliance.ini:2 [server] port: '70000' is out of range 0..65535"),
    ("[server]\nmax_message_bytes = 100\n",
     "rt-appliance.ini:2 [server] max_message_bytes: '100' is out of range (must be >= 1024)"),
    ("[server]\nping_interval = 0\n",
     "rt-appliance.ini:2 [server] ping_interval: '0' is out of range (must be > 0)"),
    ("[server]\nping_timeout = inf\n",
     "rt-appliance.ini:2 [server] ping_timeout: 'inf' is not a number"),
    ("[auth]\nleeway = -1\n",
     "rt-appliance.ini:2 [auth] leeway: '-1' is out of range (must be >= 0)"),
    ("[server]\ntrust_proxy_headers = sometimes\n",
     "rt-appliance.ini:2 [server] trust_proxy_headers: 'sometimes' is not a boolean "
     "(true/false, yes/no, on/off, 1/0)"),
    ("[log]\nlevel = verbose\n",
     "rt-appliance.ini:2 [log] level: 'verbose' is not one of 'debug', 'info', 'warning', 'error'"),
    ("[server]\nsocketio_path = ws\n",
     "rt-appliance.ini:2 [server] socketio_path: 'ws' must start with '/'"),
    ("[server]\ncors_allow_origin = chat.example.com\n",
     "rt-appliance.ini:2 [server] cors_allow_origin: 'chat.example.com' is not an origin like "
     "https://chat.example.com"),
    ("[server]\ncors_allow_origin =\n",
     "rt-appliance.ini:2 [server] cors_allow_origin: at least one origin (or *) is required"),
    ("[auth]\nalgorithms = HS256, none\n",
     "rt-appliance.ini:2 [auth] algorithms: 'none' is refused: it would accept unsigned tokens"),
    ("[auth]\nalgorithms = HS1\n",
     "rt-appliance.ini:2 [auth] algorithms: 'HS1' is not one of "
     "HS256 HS384 HS512 RS256 RS384 RS512 ES256 ES384 ES512"),
    ("[auth]\nalgorithms = HS256, RS256\n",
     "rt-appliance.ini:2 [auth] algorithms: RS256 needs [auth] public_key_file"),
    ("[auth]\nalgorithms = ES256\npublic_key_file = missing.pem\n",
     "rt-appliance.ini:3 [auth] public_key_file: 'missing.pem' is not a file"),
    ("[state]\ndata_dir =\n", "rt-appliance.ini:2 [state] data_dir: a path is required"),
    ("[state]\nredis_url = http://127.0.0.1:6379\n",
     "rt-appliance.ini:2 [state] redis_url: must start with redis://, rediss:// or unix://"),
    ("[state]\nsentinel_hosts = a, b:port\n",
     "rt-appliance.ini:2 [state] sentinel_hosts: 'b:port' is not host or host:port"),
    ("[upstream]\nbase_url = ftp://example.com\n",
     "rt-appliance.ini:2 [upstream] base_url: must be empty or an http:// or https:// URL "
     "with a host"),
    ("[documents]\nnamespaces = note, a:b\n",
     "rt-appliance.ini:2 [documents] namespaces: 'a:b' is not a namespace "
     "(letters, digits, '_' and '-')"),
    ("[documents]\ncompaction_threshold = 1\n",
     "rt-appliance.ini:2 [documents] compaction_threshold: '1' is out of range (must be >= 2)"),
    ("[limits]\nusage_models_per_connection = 0\n",
     "rt-appliance.ini:2 [limits] usage_models_per_connection: '0' is out of range "
     "(must be >= 1)"),
    ("[limits]\nusage_models_max = many\n",
     "rt-appliance.ini:2 [limits] usage_models_max: 'many' is not an integer"),
    ("[limits]\nchat_reads_per_user = -5\n",
     "rt-appliance.ini:2 [limits] chat_reads_per_user: '-5' is out of range (must be >= 1)"),
]


@pytest.mark.parametrize(("text", "message"), IN_FILE_ERRORS)
def test_file_errors_name_file_line_and_option(ini, text, message):
    assert errors_of(ini(text)) == [message]


@pytest.mark.parametrize(("env", "message"), [
    ({"WEBSOCKET_SERVER_PING_INTERVAL": "abc"},
     "env WEBSOCKET_SERVER_PING_INTERVAL: 'abc' is not a number"),
    ({"ENABLE_WEBSOCKET_SUPPORT": "maybe"},
     "env ENABLE_WEBSOCKET_SUPPORT: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)"),
    ({"WEBSOCKET_MANAGER": "memcached"},
     "env WEBSOCKET_MANAGER: 'memcached' is not one of '', 'redis'"),
    ({"RT_SERVER_PORT": "-1"}, "env RT_SERVER_PORT: '-1' is out of range 0..65535"),
    ({"RT_LIMITS_USAGE_MODELS_MAX": "0"},
     "env RT_LIMITS_USAGE_MODELS_MAX: '0' is out of range (must be >= 1)"),
    ({"RT_LIMITS_CHAT_READS_PER_USER": "1e3"},
     "env RT_LIMITS_CHAT_READS_PER_USER: '1e3' is not an integer"),
    ({"RT_AUTH_ALGORITHMS": "RS512"}, "env RT_AUTH_ALGORITHMS: RS512 needs [auth] public_key_file"),
    ({"REDIS_URL": "http://:hunter2@cache:6379"},
     "env REDIS_URL: must start with redis://, rediss:// or unix://"),
])
def test_env_errors_name_the_variable(env, message):
    assert errors_of(NO_FILE, env) == [message]


def test_flag_errors_name_the_flag():
    assert errors_of(NO_FILE, {}, {("server", "port"): "http"}) == [
        "flag --port: 'http' is not an integer"]


def test_missing_explicit_file_is_an_error(ini):
    assert errors_of("nowhere.ini") == ["nowhere.ini: config file not found"]


def test_unreadable_file_is_an_error(tmp_path):
    assert errors_of(str(tmp_path)) == [f"{tmp_path}: cannot read config file: Is a directory"]


def test_all_errors_are_reported_together(ini):
    path = ini("[server]\nport = x\nbogus = 1\n[auth]\nleeway = soon\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"WEBSOCKET_SERVER_PING_TIMEOUT": "0"}, {("server", "host"): "::"})
    expected = [
        "rt-appliance.ini:2 [server] port: 'x' is not an integer",
        "rt-appliance.ini:3 [server] bogus: unknown option",
        "rt-appliance.ini:5 [auth] leeway: 'soon' is not a number",
        "env WEBSOCKET_SERVER_PING_TIMEOUT: '0' is out of range (must be > 0)",
    ]
    assert caught.value.errors == expected
    assert str(caught.value) == "\n".join(expected)


def test_bad_file_value_is_reported_even_when_env_overrides_it(ini):
    # Otherwise the broken file would surface only once the variable is removed.
    assert errors_of(ini("[server]\nport = x\n"), {"RT_SERVER_PORT": "80"}) == [
        "rt-appliance.ini:2 [server] port: 'x' is not an integer"]


def test_byte_order_mark_is_ignored(ini):
    Path(ini("")).write_bytes(b"\xef\xbb\xbf[server]\nport = 81\n")
    assert load_settings("rt-appliance.ini", {}).server.port == 81


def test_unknown_section_is_reported_once(ini):
    assert errors_of(ini("[redis]\nurl = redis://x\nhost = y\n")) == [
        "rt-appliance.ini:1: unknown section [redis]"]


# --- output ----------------------------------------------------------------------------------


def test_describe_redacts_secrets_and_shows_sources(ini):
    path = ini("[upstream]\napi_key = upstream-secret\n")
    s = load_settings(path, {"WEBUI_SECRET_KEY": "s3cret-value",
                             "REDIS_URL": "redis://:pw123@cache:6379/0",
                             "RT_UPSTREAM_BASE_URL": "https://me:p@ss/w0rd@llm.example/v1"})
    s = s.replace("auth", "api_key", "generated-key", source="generated data/api_key")
    out = describe(s)
    for secret in ("s3cret-value", "upstream-secret", "generated-key", "pw123", "w0rd"):
        assert secret not in out
    lines = out.splitlines()
    assert len(lines) == len(OPTIONS)
    by_option = {line.split(" = ")[0]: line for line in lines}
    assert re.fullmatch(r"\[auth\] secret_key = \*\*\* +\(env WEBUI_SECRET_KEY\)",
                        by_option["[auth] secret_key"])
    assert re.fullmatch(r"\[auth\] api_key = \*\*\* +\(generated data/api_key\)",
                        by_option["[auth] api_key"])
    assert re.fullmatch(r"\[upstream\] api_key = \*\*\* +\(rt-appliance.ini:2\)",
                        by_option["[upstream] api_key"])
    assert re.fullmatch(r"\[state\] redis_url = redis://:\*\*\*@cache:6379/0 +\(env REDIS_URL\)",
                        by_option["[state] redis_url"])
    assert re.fullmatch(r"\[upstream\] base_url = https://me:\*\*\*@llm.example/v1 +\(env .*\)",
                        by_option["[upstream] base_url"])
    assert re.fullmatch(r"\[server\] port = 8080 +\(default\)", by_option["[server] port"])
    assert re.fullmatch(r"\[server\] enable_websocket = true +\(default\)",
                        by_option["[server] enable_websocket"])


def test_describe_shows_empty_secrets_as_empty():
    out = describe(load_settings(NO_FILE, {}))
    assert re.search(r"^\[auth\] secret_key = +\(default\)$", out, re.M)


def test_describe_values_read_back_as_the_same_settings(tmp_path):
    s = load_settings(NO_FILE, {"CORS_ALLOW_ORIGIN": "https://a.example https://b.example",
                                "WEBSOCKET_SERVER_PING_INTERVAL": "0.5",
                                "WEBSOCKET_SENTINEL_HOSTS": "a,b:2"})
    sections: dict[str, list[str]] = {}
    for line in describe(s).splitlines():
        section, name, value = re.fullmatch(r"\[(\w+)\] (\w+) = (.*?) +\(.*\)", line).groups()
        sections.setdefault(section, []).append(f"{name} = {value}")
    text = "".join(f"[{name}]\n" + "\n".join(rows) + "\n" for name, rows in sections.items())
    (tmp_path / "round.ini").write_text(text)
    assert load_settings(str(tmp_path / "round.ini"), {}) == s


def test_shipped_ini_is_the_rendered_schema():
    assert (ROOT / "conf" / "rt-appliance.ini").read_text(encoding="utf-8") == render_default_ini()


def test_shipped_ini_loads_to_the_defaults():
    path = str(ROOT / "conf" / "rt-appliance.ini")
    s = load_settings(path, {})
    assert s == load_settings(NO_FILE, {})
    assert all(s.source(o.section, o.name).startswith(path + ":") for o in OPTIONS)


def test_rendered_ini_documents_every_option():
    blocks = {}
    section = None
    for block in render_default_ini().split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith("["):
            section = lines[0][1:-1]
        elif not lines[-1].startswith("#"):  # the header is all comment
            name = lines[-1].split(" =")[0]
            blocks[section, name] = (lines[-1], " ".join(line[2:] for line in lines[:-1]))
    assert set(blocks) == {o.key for o in OPTIONS}
    for o in OPTIONS:
        assignment, comment = blocks[o.key]
        assert assignment == f"{o.name} = {o.default}".rstrip()
        assert o.help in comment
        assert all(name in comment for name in o.env)
        assert ("Applies on reload." if o.reloadable else "Needs a restart.") in comment


# --- reload ----------------------------------------------------------------------------------

RELOADABLE = {
    ("log", "level"), ("server", "cors_allow_origin"), ("auth", "api_key"),
    ("server", "ping_interval"), ("server", "ping_timeout"), ("server", "max_message_bytes"),
    ("server", "drain_rate"),
}


def test_reloadable_options_are_exactly_the_documented_ones():
    expected = RELOADABLE | {o.key for o in OPTIONS
                             if o.section in ("limits", "upstream", "documents")}
    assert {o.key for o in OPTIONS if o.reloadable} == expected


def test_reload_diff_splits_live_changes_from_restarts():
    old = load_settings(NO_FILE, {})
    assert reload_diff(old, old) == ([], [])
    new = (old.replace("log", "level", "debug")
              .replace("server", "port", 9)
              .replace("server", "ping_interval", 1.5)
              .replace("limits", "typing_burst", 3)
              .replace("auth", "api_key", "new-key")
              .replace("auth", "secret_key", "new-secret")
              .replace("documents", "namespaces", ("note", "doc"))
              .replace("upstream", "base_url", "http://llm")
              .replace("state", "manager", "redis"))
    applied, need_restart = reload_diff(old, new)
    assert applied == ["server.ping_interval", "auth.api_key", "limits.typing_burst",
                       "documents.namespaces", "upstream.base_url", "log.level"]
    assert need_restart == ["server.port", "auth.secret_key", "state.manager"]


def test_open_webui_profile_follows_its_limits_unless_set():
    s = load_settings(NO_FILE, {"OPENWEBUI_URL": "http://127.0.0.1:8080"})
    assert s.server.max_message_bytes == 16 * 1024 * 1024
    assert s.documents.max_document_bytes == 2 * 1024 * 1024
    assert s.source("server", "max_message_bytes") == "default (open-webui profile)"
    s = load_settings(NO_FILE, {"OPENWEBUI_URL": "http://127.0.0.1:8080",
                                "RT_SERVER_MAX_MESSAGE_BYTES": "2000000"})
    assert s.server.max_message_bytes == 2000000
    assert load_settings(NO_FILE, {}).server.max_message_bytes == 1000000
