"""The oracles shared by the atheris harnesses (fuzz/fuzz_*.py) and the hypothesis
property tests (tests/fuzz/test_properties_*.py).

Every `check_*` function takes one input, runs it through the real code and raises
`AssertionError` (or lets an unexpected exception escape) when the code misbehaves:

- only the documented exception types may come out of a parser
  (`ProtocolError`, `MalformedPacket`, `AuthError`, `ConfigError`, `SSEError`,
  `InvalidUpdate`); anything else is a defect;
- a client event is always answered (ack), never with `internal`, never logs an error and
  never kills its connection;
- an input that is refused changes no state: rooms, sessions, presence, usage, document
  editors, every row of the store and the state of every document are what they were.

`World` is a real appliance in process, not listening: the composition root
(`rt.app.Appliance`) with its real SQLite store in a temporary directory, the real
python-socketio server on the real Engine.IO layer, the document service attached, and real
long-polling Engine.IO sessions that connect with real tokens. Events are posted as
polling bodies (`EngineSession.handle_post`), so they go through Engine.IO decoding,
the strict Socket.IO decoder, python-socketio's dispatch and the gateway's error boundary
exactly as a browser's would. Nothing opens a socket.

Importing this module reads no environment and opens nothing.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from typing import Any

import pycrdt
import socketio.packet as sio_packet

from rt import config
from rt.auth import AuthError, TokenVerifier
from rt.documents.yjs import (
    EMPTY_UPDATE,
    InvalidUpdate,
    _Reader,
    decode_state_vector,
    inspect_update,
)
from rt.engine.protocol import MESSAGE, SEPARATOR, ProtocolError, decode_packet, decode_payload
from rt.sio import RESERVED_EVENTS, MalformedPacket
from rt.sio import decode_packet as decode_sio
from rt.sse import SSEError, SSEEvent, SSEParser

SECRET = "fuzz-secret-" + "k" * 64
API_KEY = "fuzz-api-key-0123456789"
ERROR_CODES = {"bad_request", "forbidden", "not_found", "too_large", "rate_limited"}
EVENTS = (
    "user-join", "join-channels", "join-note", "heartbeat", "usage", "events:channel",
    "events:chat", "ydoc:document:join", "ydoc:document:state", "ydoc:document:update",
    "ydoc:document:leave", "ydoc:awareness:update",
)
BLOB = "$blob"  # in an event's JSON, stands for the binary attachment of the input


# =========================================================================== Engine.IO
def check_engineio(data: bytes) -> None:
    """`data` as a polling POST body, as a websocket text frame and as a binary frame."""
    try:
        packets = decode_payload(data)
    except ProtocolError:
        packets = None
    if packets is not None:
        assert packets, "a decoded payload has at least one packet"
        for ptype, body in packets:
            assert 0 <= ptype <= 6 and isinstance(body, (str, bytes)), (ptype, body)
            if isinstance(body, bytes):
                assert ptype == MESSAGE
        # what was decoded encodes back to a payload that decodes to the same packets
        again = SEPARATOR.join(
            "b" + base64.b64encode(body).decode() if isinstance(body, bytes)
            else chr(48 + ptype) + body for ptype, body in packets)
        assert decode_payload(again.encode()) == packets
    text = data.decode("utf-8", "replace")
    try:
        ptype, body = decode_packet(text)
    except ProtocolError:
        assert not text or text[0] not in "0123456" or text[0] == "b"
    else:
        assert 0 <= ptype <= 6
        if text[0] != "b":
            assert (ptype, body) == (ord(text[0]) - 48, text[1:])
    assert decode_packet(data) == (MESSAGE, data)


# =========================================================================== Socket.IO
JSON_LOADS = sio_packet.Packet.json.loads  # what SocketServer._decode passes (engineio.json)


def check_socketio(text: str, attachments: list[bytes]) -> None:
    """One Socket.IO text packet through the strict decoder, then (binary packets) the
    attachments through python-socketio's reconstruction, as `SocketServer._decode` does."""
    try:
        decoded = decode_sio(text, JSON_LOADS)
    except MalformedPacket:
        return
    assert decoded.type in (0, 1, 2, 3, 5, 6), decoded.type
    assert decoded.namespace.startswith("/")
    assert decoded.id is None or (type(decoded.id) is int and decoded.id >= 0)
    if decoded.type in (2, 5):
        assert isinstance(decoded.data, list) and isinstance(decoded.data[0], str)
        assert decoded.data[0] not in RESERVED_EVENTS
    binary = decoded.type in (5, 6)
    assert (decoded.attachments > 0) == binary and decoded.attachments <= 10
    # python-socketio's own (lenient) decoder reads what the strict one accepts the same
    # way, except for a `?query` on the namespace, which it drops
    theirs = sio_packet.Packet(encoded_packet=text)
    assert theirs.packet_type == decoded.type
    assert theirs.id == decoded.id
    assert repr(theirs.data) == repr(decoded.data)  # repr: NaN is not equal to itself
    assert (theirs.namespace or "/") == (decoded.namespace.split("?", 1)[0] or "/")
    if binary:
        pkt = sio_packet.Packet(decoded.type, decoded.data, namespace=decoded.namespace,
                                id=decoded.id, binary=False)
        pkt.attachment_count = decoded.attachments
        blobs = (attachments + [b"x"] * decoded.attachments)[:decoded.attachments]
        done = False
        for blob in blobs:
            done = pkt.add_attachment(blob)
        assert done
        _no_placeholders(pkt.data)


def _no_placeholders(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            assert not (item.get("_placeholder") and "num" in item), item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# =========================================================================== JWT
_RSA_PEM: tuple[str, str] | None = None


def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM), made once per process."""
    global _RSA_PEM
    if _RSA_PEM is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        _RSA_PEM = private, public
    return _RSA_PEM


NOW = 1_700_000_000.0


def verifiers() -> list[TokenVerifier]:
    """An HS256-only verifier with a short secret (open-webui's usual), and one that takes
    HS* and RS256 (the algorithm-confusion setup). Made once per process."""
    if _VERIFIERS:
        return _VERIFIERS
    _, public = rsa_keys()
    _VERIFIERS[:] = [
        TokenVerifier("short", ("HS256",), clock=lambda: NOW),
        TokenVerifier(SECRET, ("HS256", "HS384", "HS512", "RS256"), public_key=public,
                      leeway=30, clock=lambda: NOW),
    ]
    return _VERIFIERS


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(header: bytes, payload: bytes, key: str | bytes, alg: str) -> str:
    """A compact JWS over arbitrary header and payload bytes (which PyJWT would refuse to
    produce)."""
    import hashlib
    import hmac

    signing_input = (b64url(header) + "." + b64url(payload)).encode()
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
                  "HS512": hashlib.sha512}[alg]
        key = key.encode() if isinstance(key, str) else key
        sig = hmac.new(key, signing_input, digest).digest()
    else:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        sig = _private_key(key).sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64url(sig)


_KEYS: dict = {}


def _private_key(pem: str | bytes):
    key = _KEYS.get(pem)
    if key is None:
        from cryptography.hazmat.primitives import serialization

        key = _KEYS[pem] = serialization.load_pem_private_key(
            pem.encode() if isinstance(pem, str) else pem, None)
    return key


_VERIFIERS: list[TokenVerifier] = []


def check_jwt_forged(token: Any) -> None:
    """A token nobody holding the keys made: every verifier refuses it with AuthError."""
    for verifier in verifiers():
        try:
            claims = verifier.verify(token)
        except AuthError as exc:
            assert exc.code in ("token_missing", "token_invalid", "token_expired"), exc.code
        else:
            raise AssertionError(f"a forged token was accepted: {token!r} → {claims!r}")


def check_jwt_signed(header: bytes, payload: bytes, alg: str) -> dict | None:
    """Arbitrary header and claims, validly signed (HS* with the secret, RS256 with the
    private key), and the same bytes signed with the public key as an HMAC secret
    (algorithm confusion). Returns the claims when accepted, after checking them."""
    private, public = rsa_keys()
    verifier = verifiers()[1]
    # algorithm confusion: the public key used as an HMAC secret is never accepted
    confused = sign(header, payload, public, "HS256")
    try:
        claims = verifier.verify(confused)
    except AuthError:
        pass
    else:
        raise AssertionError(f"HS256 signed with the RSA public key accepted: {claims!r}")
    token = sign(header, payload, private if alg == "RS256" else SECRET, alg)
    try:
        claims = verifier.verify(token)
    except AuthError as exc:
        assert exc.code in ("token_missing", "token_invalid", "token_expired"), exc.code
        return None
    assert isinstance(claims, dict)
    assert isinstance(claims.get("id"), str) and claims["id"], claims
    hdr = json.loads(header)
    assert hdr.get("alg") == alg  # the header's algorithm, and it is one configured
    for name in ("exp", "nbf"):
        value = claims.get(name)
        assert value is None or (type(value) in (int, float)), claims
    if claims.get("exp") is not None:
        assert not NOW > claims["exp"] + 30, "an expired token was accepted"
    if claims.get("nbf") is not None:
        assert not NOW < claims["nbf"] - 30, "a token not valid yet was accepted"
    return claims


# =========================================================================== INI
SECRET_MARK = "S3cr3tV4lue"


# Known defect, reported and not fixed here (fuzz/README.md): a credential written on the
# next line (wrapped), `secret_key =` then `    dGhpcy…==`, makes that line an option
# named after the secret, echoed as "unknown option". While True the oracle tolerates
# "unknown option" errors; tests/fuzz/test_properties_ini.py has the strict xfail.
KNOWN_SECRET_AS_OPTION_NAME = False


def check_ini(raw: bytes, environ: dict[str, str], directory: str) -> config.Settings | None:
    """`raw` as the configuration file: a Settings, or ConfigError and nothing else. A
    value of a secret option never appears in an error message."""
    path = os.path.join(directory, "rt-appliance.ini")
    with open(path, "wb") as fh:
        fh.write(raw)
    try:
        settings = config.load_settings(path, environ)
    except config.ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        shown = exc.errors
        if KNOWN_SECRET_AS_OPTION_NAME:
            shown = [e for e in shown if not e.endswith(": unknown option")]
        for secret in _secret_values(raw, environ):
            for error in shown:
                assert not _shows(secret, error), f"secret {secret!r} echoed in {error}"
        return None
    # what a loaded configuration is used for must work too
    config.describe(settings)
    config.reload_diff(settings, settings)
    text = config.describe(settings)
    for secret in _secret_values(raw, environ):
        assert not _shows(secret, text), f"secret {secret!r} shown by print-config"
    return settings


def _shows(secret: str, text: str) -> bool:
    """The marked value itself, not a longer one it begins (S3cr3tV4lue vs S3cr3tV4luez)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", text) is not None


def _secret_values(raw: bytes, environ: dict[str, str]) -> list[str]:
    """Marked values given to credentials: secret options, and the password part of URL
    options. A marker that is also given to any other option (which may echo it) is left
    out."""
    secret: set[str] = set()
    other: set[str] = set()

    def take(option, value: str) -> None:
        marks = set(re.findall(SECRET_MARK + r"[A-Za-z0-9]*", value))
        if option is None or not marks:
            other.update(marks)
            return
        if option.secret:
            secret.update(marks)
        elif option.type.kind.startswith(("redis://", "empty or http")):
            userinfo = re.search(r"//[^/@:]*:(.*)@", value)
            inside = set(re.findall(SECRET_MARK + r"[A-Za-z0-9]*", userinfo.group(1))) if userinfo else set()
            secret.update(inside)
            other.update(marks - inside)
        else:
            other.update(marks)

    section = None
    for line in raw.decode("utf-8", "replace").splitlines():
        text = line.strip()
        if text.startswith("[") and text.endswith("]"):
            section = text[1:-1].strip()
            other.update(re.findall(SECRET_MARK + r"[A-Za-z0-9]*", text))
            continue
        name, eq, value = text.partition("=")
        option = config._BY_KEY.get((section, name.strip())) if eq else None
        if option is None:
            # "secret_key abc==" (the '=' forgotten, one in the value): the words after a
            # credential's name are that credential
            first, _, rest = text.partition(" ")
            mistyped = config._BY_KEY.get((section, first.strip()))
            if mistyped is not None and rest.strip():
                take(mistyped, rest)
                continue
        take(option, value if eq else text)
    by_env = {n: o for o in config.OPTIONS for n in o.env}
    for name, value in environ.items():
        take(by_env.get(name), value)
        other.update(re.findall(SECRET_MARK + r"[A-Za-z0-9]*", name))
    return sorted(secret - other)


# =========================================================================== SSE
def sse_reference(data: bytes) -> list[SSEEvent]:
    """The WHATWG event-stream interpretation, whole-stream and unbounded, plus the
    parser's documented leniency at the end (a last event whose lines were complete)."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    parts = re.split(r"\r\n|\r|\n", text)
    lines = parts[:-1]  # the unterminated rest is dropped
    events: list[SSEEvent] = []
    data_lines: list[str] = []
    event, last_id, retry, pending = "", None, None, False
    for line in lines:
        if not line:
            pending = False
            if data_lines:
                events.append(SSEEvent("\n".join(data_lines), event or "message", last_id, retry))
            data_lines, event = [], ""
            continue
        if line.startswith(":"):
            continue
        pending = True
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_lines.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and re.fullmatch("[0-9]+", value):
            retry = int(value)
    if pending and data_lines:
        events.append(SSEEvent("\n".join(data_lines), event or "message", last_id, retry))
    return events


def sse_run(data: bytes, cuts: list[int], max_line: int, max_event: int
            ) -> tuple[list[SSEEvent], bool]:
    """Feed `data` cut at `cuts`; (events, whether SSEError ended the stream)."""
    parser = SSEParser(max_line=max_line, max_event=max_event)
    events: list[SSEEvent] = []
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    start = 0
    try:
        for end in bounds + [len(data)]:
            events += parser.feed(data[start:end])
            start = end
        events += parser.finish()
    except SSEError:
        return events, True
    assert parser.bytes_in == len(data)
    return events, False


def check_sse(data: bytes, cuts: list[int], max_line: int = 1 << 20,
              max_event: int = 4 << 20) -> None:
    """Any chunking gives the events of the whole stream (and the reference's); with
    limits, every chunking agrees on whether SSEError is raised, and what came before
    the error is a prefix of the stream's events."""
    reference = sse_reference(data)
    whole, whole_err = sse_run(data, [], 1 << 30, 1 << 30)
    assert not whole_err and whole == reference, (whole, reference)
    one, one_err = sse_run(data, [], max_line, max_event)
    cut, cut_err = sse_run(data, cuts, max_line, max_event)
    bytewise, byte_err = sse_run(data, list(range(len(data))) if len(data) < 512 else cuts,
                                 max_line, max_event)
    assert one_err == cut_err == byte_err, (one_err, cut_err, byte_err)
    for events, err in ((one, one_err), (cut, cut_err), (bytewise, byte_err)):
        if err:
            assert events == reference[:len(events)]
        else:
            assert events == reference


# =========================================================================== Yjs
def canonical_state(update: bytes) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
    """(state vector, delete set) of the document an update builds: equal for equal
    documents, whatever squashing or compaction did to the encoding."""
    doc = pycrdt.Doc()
    if update and update != EMPTY_UPDATE:
        doc.apply_update(update)
    sv_bytes = doc.get_state()
    sv = decode_state_vector(sv_bytes)
    reader = _Reader(doc.get_update(sv_bytes))  # no structs: only the delete set
    assert reader.var_uint() == 0
    deletes: dict[int, list[tuple[int, int]]] = {}
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        ranges = deletes.setdefault(client, [])
        for _ in range(reader.var_uint()):
            ranges.append((reader.var_uint(), reader.var_uint()))
    return sv, {c: sorted(r) for c, r in deletes.items() if r}


# =========================================================================== the world
WORLD_INI = """\
[server]
ping_interval = 100000
ping_timeout = 100000
[limits]
events_per_second = 1000000
events_burst = 1000000
connects_per_second_per_ip = 1000000
connect_burst_per_ip = 1000000
max_rooms_per_connection = 12
max_documents_per_connection = 3
[documents]
namespaces = note, scratch
content_debounce = 0
max_update_bytes = 65536
max_document_bytes = 262144
"""

USERS = (("alice", "Alice", "user"), ("bob", "Bob", "user"), ("root", "Root", "admin"),
         ("pat", "Pat", "pending"))
CHANNELS = {"c1": ["alice", "bob"], "c2": ["bob"]}
NOTES = (("n1", "alice", ("bob",), ()), ("n2", "bob", ("alice",), ()),
         ("n3", "bob", (), ()), ("n4", "bob", (), ("alice",)))



class ErrorLog(logging.Handler):
    """Records ERROR and above from the appliance's and the libraries' loggers."""

    NAMES = ("rt", "socketio", "engineio", "asyncio", "tornado")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def install(self) -> None:
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)

    def remove(self) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}"
               + (f"\n{logging.Formatter().formatException(r.exc_info)}" if r.exc_info else "")
               for r in self.records]
        self.records.clear()
        return out


class Conn:
    """A real long-polling Engine.IO session with a connected Socket.IO client."""

    def __init__(self, world: World, session, sid: str, user: str):
        self.world, self.session, self.sid, self.user = world, session, sid, user
        self.ack_id = 0

    @property
    def alive(self) -> bool:
        mgr = self.world.app.sio.manager
        return not self.session.closed and mgr.is_connected(self.sid, "/")

    def drain(self) -> list[str]:
        """The Socket.IO packets queued for this client (and forget them)."""
        queued = list(self.session.queue)
        self.session.queue.clear()
        self.session.queued_bytes = 0  # as a poll that collected them would
        return [p.data for p in queued if p.packet_type == MESSAGE and isinstance(p.data, str)]


class Outcome:
    def __init__(self, ack: list | None, events: list, closed: bool):
        self.ack, self.events, self.closed = ack, events, closed

    @property
    def error(self) -> dict | None:
        """The refusal: in the ack, or (no ack asked) as an `error` event."""
        if self.ack is not None:
            if len(self.ack) == 1 and isinstance(self.ack[0], dict) and "error" in self.ack[0]:
                return self.ack[0]
            return None
        for event in self.events:
            if event and event[0] == "error" and len(event) == 2 and isinstance(event[1], dict):
                return event[1]
        return None

    @property
    def refused(self) -> bool:
        return self.error is not None

    @property
    def code(self) -> str | None:
        error = self.error
        return error["error"] if error is not None else None

    def __repr__(self) -> str:
        return f"Outcome(ack={self.ack!r}, closed={self.closed})"


class World:
    """A real appliance in process (see the module docstring). Use from one event loop:
    `await World.create(dir)`, then `await world.close()`."""

    def __init__(self, directory: str, ini: str = WORLD_INI):
        self.directory = directory
        self.ini = ini
        self.app = None
        self.collab = None
        self.conns: dict[str, Conn] = {}
        self.errors = ErrorLog()
        self._lifetime: set[asyncio.Task] = set()  # the appliance's own long-running tasks
        self.protocol_closed: set[str] = set()  # Engine.IO sids closed for a protocol error
        self.late_dispatches: list[tuple] = []  # packets handled after that close

    @classmethod
    async def create(cls, directory: str, ini: str = WORLD_INI) -> World:
        world = cls(directory, ini)
        await world._start()
        return world

    async def _start(self) -> None:
        from rt.app import Appliance
        from rt.backends import Note, User

        path = os.path.join(self.directory, "rt-appliance.ini")
        with open(path, "w") as fh:
            fh.write(self.ini)
        settings = config.load_settings(path, {"WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY}, {
            ("server", "host"): "127.0.0.1", ("server", "port"): "0",
            ("state", "data_dir"): os.path.join(self.directory, "data")})
        self.errors.install()
        self.app = app = Appliance(settings, announce=lambda _msg: None)
        await app.backend.start()
        app.web = app.web_app()
        self.collab = app.documents
        self._watch_dispatch()
        self._lifetime = set(asyncio.all_tasks()) - {asyncio.current_task()}
        store = app.backend.store
        for uid, name, role in USERS:
            await store.put_user(User(uid, name, role))
        for cid, members in CHANNELS.items():
            await store.put_channel(cid, members)
        for nid, owner, read, write in NOTES:
            await store.put_note(Note(nid, owner, frozenset(read), frozenset(write)))
        self.conns["alice"] = await self.connect("alice")
        self.conns["bob"] = await self.connect("bob")  # an onlooker in the same rooms
        await self.emit(self.conns["bob"], ["user-join", {}])
        await self.emit(self.conns["bob"], ["join-note", {"note_id": "n2"}])
        await self.emit(self.conns["bob"], ["ydoc:document:join", {"document_id": "note:n1"}])
        for conn in self.conns.values():
            conn.drain()
        leftover = self.errors.take()
        assert not leftover, leftover

    async def close(self) -> None:
        app = self.app
        if app is None:
            return
        self.app = None
        try:
            await app.sio.engine.shutdown()
            for _ in range(5):
                await asyncio.sleep(0)
            for conn in self.conns.values():
                await self._settle(conn.session)
            await app.tasks.stop()
            await app.documents.close()
        finally:
            await app.backend.stop()
            self.errors.remove()

    def _watch_dispatch(self) -> None:
        """Records the sessions the Socket.IO layer closes for a protocol error, and any
        packet of theirs it still hands to a handler afterwards (instance attributes wrap
        the real methods; nothing else changes)."""
        sio = self.app.sio
        close_session = sio.eio.close_session

        def closing(eio_sid: str, reason: str) -> None:
            self.protocol_closed.add(eio_sid)
            close_session(eio_sid, reason)

        sio.eio.close_session = closing
        for name in ("_handle_connect", "_handle_event", "_handle_ack"):
            real = getattr(sio, name)

            async def watched(eio_sid, namespace, *args, _real=real, _name=name):
                if eio_sid in self.protocol_closed:
                    self.late_dispatches.append((_name, eio_sid, args))
                return await _real(eio_sid, namespace, *args)

            setattr(sio, name, watched)

    def take_late_dispatches(self) -> list[tuple]:
        late, self.late_dispatches = self.late_dispatches, []
        return late

    # ------------------------------------------------------------------ clients
    async def connect(self, user: str) -> Conn:
        engine = self.app.sio.engine
        session = await engine.create_session(
            {"REMOTE_ADDR": "192.0.2.1", "rt.transport": "polling"}, "polling")
        token = self.app.verifier.issue(user, 3600)
        session.handle_post(b"40" + json.dumps({"token": token}).encode())
        await self._settle(session)
        sid = self.app.sio.manager.sid_from_eio_sid(session.sid, "/")
        assert sid is not None, f"{user} did not connect: {[p.data for p in session.queue]}"
        conn = Conn(self, session, sid, user)
        conn.drain()
        return conn

    async def _settle(self, session) -> None:
        """Until the session's inbound messages and what they started (error events sent
        with ensure_future, relays) have run."""
        current = asyncio.current_task()
        for _ in range(1000):
            task = session._consumer
            if task is not None:
                await asyncio.wait([task], timeout=30)
                continue
            others = {t for t in asyncio.all_tasks()
                      if t is not current and t not in self._lifetime and not t.done()}
            if not others:
                return
            await asyncio.wait(others, timeout=30)
        raise AssertionError("the session did not settle")

    async def post(self, conn: Conn, body: bytes) -> None:
        """One polling POST, as the HTTP handler makes it (HandshakeError = HTTP 400)."""
        from rt.engine.protocol import HandshakeError

        try:
            conn.session.handle_post(body)
        except HandshakeError:
            pass
        await self._settle(conn.session)

    async def emit(self, conn: Conn, args: list, ack: bool = True) -> Outcome:
        """Send `["event", payload...]` (bytes values go as binary attachments) and
        return the answer."""
        ack_id = None
        if ack:
            conn.ack_id += 1
            ack_id = conn.ack_id
        pkt = sio_packet.Packet(sio_packet.EVENT, data=args, id=ack_id)
        encoded = pkt.encode()
        parts = encoded if isinstance(encoded, list) else [encoded]
        body = SEPARATOR.join("4" + parts[0] if i == 0 else "b" + base64.b64encode(part).decode()
                              for i, part in enumerate(parts))
        await self.post(conn, body.encode())
        acks, events = [], []
        for text in conn.drain():
            got = sio_packet.Packet(encoded_packet=text)
            if got.packet_type == sio_packet.ACK and got.id == ack_id:
                acks.append(got.data)
            elif got.packet_type == sio_packet.EVENT:
                events.append(got.data)
        if ack:
            assert len(acks) == 1 or not conn.alive, f"{len(acks)} acks for {args!r}"
        return Outcome(acks[0] if acks else None, events, not conn.alive)

    # ------------------------------------------------------------------ state
    def _store_rows(self) -> dict[str, list[tuple]]:
        path = self.app.backend.store.path
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                    for t in tables}
        finally:
            db.close()

    async def document_ids(self) -> list[str]:
        rows = self._store_rows()
        return sorted({r[0] for r in rows.get("documents", ())} | set(self.collab.docs))

    async def document_state(self, document_id: str) -> tuple | None:
        """What a client joining now would get: (state bytes, content), None if absent."""
        got = await self.collab.get_document(document_id)
        if got is None:
            return None
        return base64.b64decode(got["state_b64"]), got["content"]

    async def snapshot(self) -> dict[str, Any]:
        app, collab = self.app, self.collab
        rooms = {str(room): frozenset(sids)
                 for room, sids in app.sio.manager.rooms.get("/", {}).items()}
        rows = self._store_rows()
        # kept apart: a too_large refusal may follow a compaction, which re-encodes the
        # stored document (its state, compared below, stays the same)
        document_rows = {t: rows.pop(t, None) for t in ("documents", "document_updates")}
        docs = {}
        for document_id in await self.document_ids():
            state = await self.document_state(document_id)
            docs[document_id] = (None if state is None
                                 else (canonical_state(state[0]), state[1]))
        return {
            "rooms": rooms,
            "store": rows,
            "document rows": document_rows,
            "documents": docs,
            "identities": dict(app.gateway.identities),
            "presence": await app.backend.presence.users(),
            "heartbeats": dict(app.presence._pending),
            "usage": {m: dict(e) for m, e in app.backend.usage._pool.items()},
            "editors": {d: {s: (e.user_id, e.user_color) for s, e in eds.items()}
                        for d, eds in collab.editors.items()},
            "joined": {s: set(d) for s, d in collab.joined.items()},
            "pending_content": dict(collab.pending_content),
            "sessions": {sid for sid, s in app.sio.engine.sessions.items() if not s.closed},
        }

    # ------------------------------------------------------------------ the oracle
    async def check_event(self, args: list, user: str = "alice", ack: bool = True) -> Outcome:
        """One client event from `user`: answered, never `internal`, no error logged, the
        connection lives, and a refusal changes no state."""
        conn = self.conns[user]
        before = await self.snapshot()
        outcome = await self.emit(conn, args, ack=ack)
        errors = self.errors.take()
        assert not errors, f"errors logged for {args!r}:\n" + "\n".join(errors)
        if not _server_reads(args):
            # more than 10 attachments, or an integer of more than 100 digits (python-
            # socketio's JSON guard against slow int() parsing; JSON.stringify never
            # writes one): a malformed packet, which closes the session by design
            assert not conn.alive, f"{args!r} was read"
            conn.session.close()
            await self._settle(conn.session)
            self.conns[user] = await self.connect(user)
            return outcome
        assert conn.alive, (f"the connection died from {args!r}: "
                            f"{conn.session.closed=} {conn.session.close_reason=}")
        if ack:
            assert outcome.ack is not None, f"no ack for {args!r}"
        else:
            assert outcome.ack is None
        if outcome.refused:
            assert outcome.code in ERROR_CODES, f"{outcome.code} for {args!r}: {outcome.error}"
        for other in self.conns.values():
            other.drain()
        if outcome.refused:
            after = await self.snapshot()
            for key in before:
                if key == "document rows" and outcome.code == "too_large":
                    continue
                assert before[key] == after[key], (
                    f"refused {args!r} ({outcome.ack}) changed {key}:\n"
                    f"before {before[key]!r}\nafter  {after[key]!r}")
        return outcome

    async def check_update(self, update: Any, document_id: str = "note:n1",
                           content: Any = None) -> Outcome:
        """A Yjs update from alice (joined with write access). Refused: the document's
        state bytes are identical and nothing else changed. Accepted: the document now
        contains it."""
        conn = self.conns["alice"]
        joined = await self.emit(conn, ["ydoc:document:join", {"document_id": document_id}])
        assert joined.ack == [{"ok": True}], joined
        before = await self.document_state(document_id)
        payload: dict[str, Any] = {"document_id": document_id, "update": update}
        if content is not None:
            payload["data"] = {"content": content}
        outcome = await self.check_event(["ydoc:document:update", payload])
        after = await self.document_state(document_id)
        raw = bytes(update) if isinstance(update, (bytes, bytearray)) else None
        if outcome.refused:
            assert outcome.code in ("bad_request", "too_large"), outcome
            if before is None:
                assert after is None
            else:
                # the very bytes a joining client gets; a too_large refusal may follow a
                # compaction, which re-encodes the same document
                if outcome.code == "too_large":
                    assert canonical_state(after[0]) == canonical_state(before[0])
                else:
                    assert after[0] == before[0], "a refused update changed the state bytes"
                assert after[1] == before[1]
            if raw is not None and raw != EMPTY_UPDATE:
                try:
                    inspect_update(raw)
                except InvalidUpdate:
                    assert outcome.code == "bad_request"
        else:
            assert outcome.ack == [{"ok": True}], outcome
            if raw is not None and raw != EMPTY_UPDATE:
                shape = inspect_update(raw)  # what is accepted passed the grammar
                sv = decode_state_vector(pycrdt_state(after[0]))
                for client, (_, end, _) in shape.structs.items():
                    assert end is None or sv.get(client, 0) >= end, (client, end, sv)
        return outcome

    async def check_post(self, body: bytes, user: str = "alice") -> bool:
        """One polling POST body from a connected client (Engine.IO payload of any
        packets). Nothing is logged at ERROR; the session either lives on or is closed,
        and a closed one leaves nothing behind: no identity, presence, rooms, usage,
        document editors, limits entry or Engine.IO session. The client is connected
        again afterwards. True when the session survived."""
        conn = self.conns[user]
        conn.ack_id = 10**6  # the fuzzer's ack ids are its own
        await self.post(conn, body)
        errors = self.errors.take()
        assert not errors, f"errors logged for {body!r}:\n" + "\n".join(errors)
        self._check_late(body)
        for other in self.conns.values():
            other.drain()
        if conn.alive:
            return True
        # closed by the server (protocol error, CLOSE) or left the namespace (DISCONNECT)
        conn.session.close()
        await self._settle(conn.session)
        app, sid, eio_sid = self.app, conn.sid, conn.session.sid
        away = app.recovery is not None and await app.recovery.away(sid)
        leftovers = {
            "identity": sid in app.gateway.identities,
            "presence": await app.backend.presence.user_of(sid) is not None,
            "rooms": [str(r) for r, sids in app.sio.manager.rooms.get("/", {}).items()
                      if sid in sids],
            "usage": sid in app.backend.usage._models_of,
            # a session that may still recover keeps its documents until its window ends
            # (connection state recovery: no leave/join pair for a tab that comes back)
            "editors": [] if away else [d for d, eds in self.collab.editors.items()
                                        if sid in eds],
            "joined": not away and sid in self.collab.joined,
            "limits": sid in app.limits._ip_of,
            "binary packet": eio_sid in app.sio._binary_packet,
        }
        assert not any(leftovers.values()), f"{body!r} left {leftovers}"
        self.conns[user] = await self.connect(user)
        return False

    def _check_late(self, body: bytes) -> None:
        late = self.take_late_dispatches()
        assert not late, f"handled after the protocol error that closed the session, " \
                         f"from {body!r}: {late}"

    def _census(self) -> dict[str, Any]:
        """Per-session state of the whole appliance, for "nothing left behind"."""
        app = self.app
        return {
            "identities": sorted(app.gateway.identities),
            "presence": dict(app.backend.presence._user_of),
            "limits": (dict(app.limits._ip_of), dict(app.limits._per_ip)),
            "engine sessions": sorted(app.sio.engine.sessions),
            "socket.io sids": sorted(str(s) for s in app.sio.manager.rooms.get("/", {}).get(None, {})),
            "environ": sorted(app.sio.environ),
            "binary packets": sorted(app.sio._binary_packet),
            "usage": sorted(app.backend.usage._models_of),
            "joined": sorted(self.collab.joined),
            "rooms": sorted((str(r), len(s)) for r, s in app.sio.manager.rooms.get("/", {}).items()),
        }

    async def check_fresh_post(self, body: bytes) -> None:
        """One polling POST body as the first thing a new Engine.IO session receives (so a
        CONNECT with any auth, or anything before it). Nothing logged at ERROR; once the
        client has collected its last poll (or the session is dropped), the appliance is
        back to what it was: no identity, presence, limits entry, socket.io sid, environ,
        room or Engine.IO session left."""
        from rt.engine.protocol import HandshakeError

        app = self.app
        baseline = self._census()
        session = await app.sio.engine.create_session(
            {"REMOTE_ADDR": "192.0.2.9", "rt.transport": "polling"}, "polling")
        try:
            session.handle_post(body)
        except HandshakeError:
            pass
        await self._settle(session)
        errors = self.errors.take()
        assert not errors, f"errors logged for {body!r}:\n" + "\n".join(errors)
        self._check_late(body)
        if session.closed:
            if session.sid in app.sio.engine.sessions:
                await asyncio.wait_for(session.handle_poll(), 5)  # the client's last GET
        else:
            session.close(notify_client=False)  # the client goes away
        await self._settle(session)
        for other in self.conns.values():
            other.drain()
        after = self._census()
        changed = {k: (baseline[k], after[k]) for k in baseline if baseline[k] != after[k]}
        assert not changed, f"{body!r} left state behind: {changed}"

    async def reset_document(self, document_id: str = "note:n1") -> None:
        await self.collab.delete_document(document_id)
        conn = self.conns["bob"]
        await self.emit(conn, ["ydoc:document:join", {"document_id": "note:n1"}])
        for other in self.conns.values():
            other.drain()


def _server_reads(args: list) -> bool:
    """Whether the server reads the event's packet: at most 10 binary attachments (the
    reference decoder's limit) and JSON its parser takes."""
    text = sio_packet.Packet(sio_packet.EVENT, data=args, id=1).encode()
    if isinstance(text, list):
        if len(text) - 1 > 10:
            return False
        text = text[0]
    try:
        JSON_LOADS(text[text.index("["):])
    except ValueError:
        return False
    return True


def pycrdt_state(update: bytes) -> bytes:
    doc = pycrdt.Doc()
    if update and update != EMPTY_UPDATE:
        doc.apply_update(update)
    return doc.get_state()


def event_from_input(data: bytes) -> list | None:
    """A fuzz input → the event's arguments: UTF-8 JSON of `["event", payload...]`,
    optionally followed by NUL and a binary blob that replaces every "$blob" string."""
    head, sep, blob = data.partition(b"\0")
    try:
        args = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (isinstance(args, list) and args and isinstance(args[0], str)
            and args[0] not in RESERVED_EVENTS):
        return None
    if sep:
        args = _with_blob(args, blob)
    return args


def _with_blob(value: Any, blob: bytes, depth: int = 0) -> Any:
    if depth > 64:
        return value
    if value == BLOB:
        return blob
    if isinstance(value, list):
        return [_with_blob(v, blob, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _with_blob(v, blob, depth + 1) for k, v in value.items()}
    return value


def scratch_dir() -> str | None:
    """Where in-process appliances keep their data: $RT_FUZZ_TMP, else /dev/shm (the store
    syncs every accepted write; on tmpfs that costs nothing), else the default."""
    chosen = os.environ.get("RT_FUZZ_TMP")
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return None


def fuzz(test_one_input, done=None) -> None:
    """Every harness's main: libFuzzer on `test_one_input`, then `done` (a harness's own
    clean-up, such as closing its WorldRunner). libFuzzer ends the process without Python's
    clean-up, so unless run.sh gave a scratch folder (RT_FUZZ_TMP, removed by run.sh), data
    goes to the ordinary temporary folder rather than to /dev/shm."""
    import atheris  # noqa: PLC0415 - only when fuzzing; the harness instrumented its imports

    os.environ.setdefault("RT_FUZZ_TMP", tempfile.gettempdir())
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        if done is not None:
            done()


class WorldRunner:
    """A World on its own event loop, for synchronous callers (atheris, hypothesis)."""

    def __init__(self, ini: str = WORLD_INI):
        self.ini = ini
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.mkdtemp(prefix="rt-fuzz-", dir=scratch_dir())
        self.world: World | None = None
        self.runs = 0

    def __enter__(self) -> WorldRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, coro_fn, *args, **kwargs):
        if self.world is None:
            directory = tempfile.mkdtemp(dir=self.tmp)
            self.world = self.loop.run_until_complete(World.create(directory, self.ini))
        self.runs += 1
        return self.loop.run_until_complete(coro_fn(self.world, *args, **kwargs))

    def restart(self) -> None:
        """A fresh world (the state a long run accumulates is dropped)."""
        if self.world is not None:
            world, self.world = self.world, None
            try:
                self.loop.run_until_complete(world.close())
            finally:
                shutil.rmtree(world.directory, ignore_errors=True)

    def close(self) -> None:
        try:
            self.restart()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


__all__ = [
    "AuthError", "EVENTS", "BLOB", "Outcome", "World", "WorldRunner", "canonical_state",
    "check_engineio", "check_ini", "check_jwt_forged", "check_jwt_signed", "check_socketio",
    "check_sse", "event_from_input", "sign", "sse_reference",
]


# =========================================================================== event builder
IDS = ("n1", "n2", "n3", "n4", "nx", "note:n1", "note:n2", "note:n3", "note:n4", "note:nx",
       "note:", ":n1", "scratch:a", "scratch:b", "other:a", "c1", "c2", "cx", "", "x" * 257,
       "typing", "last_read_at", "m1", "#fff")
KEYS = ("note_id", "document_id", "model", "chat_id", "action", "channel_id", "message_id",
        "data", "type", "auth", "token", "update", "user_color", "content", "user_id")


def tokens() -> tuple[str, ...]:
    """Payload tokens: alice's, bob's, an expired one, another secret's, garbage."""
    good = TokenVerifier(SECRET)
    other = TokenVerifier("another-secret-" + "z" * 64)
    # no exp (or one long past): the same bytes every time, so seeds stay stable
    return (good.issue("alice", None), good.issue("bob", None),
            good.issue("alice", None, {"exp": 1_000_000}),
            other.issue("alice", None), "e30.e30.", "a.b.c", "")


def event_from_bytes(data: bytes) -> list:
    """Structured fallback for inputs that are not JSON: an event built from the bytes."""
    import atheris  # only the atheris harnesses call this

    fdp = atheris.FuzzedDataProvider(data)
    names = EVENTS + ("unknown", "connect-ish", "x" * 100)
    args: list[Any] = [names[fdp.ConsumeIntInRange(0, len(names) - 1)]]
    toks = tokens()

    def value(depth: int) -> Any:
        kind = fdp.ConsumeIntInRange(0, 11 if depth < 4 else 6)
        if kind == 0:
            return IDS[fdp.ConsumeIntInRange(0, len(IDS) - 1)]
        if kind == 1:
            return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
        if kind == 2:
            return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9))
        if kind == 3:
            return [None, True, False][fdp.ConsumeIntInRange(0, 2)]
        if kind == 4:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        if kind == 5:
            return toks[fdp.ConsumeIntInRange(0, len(toks) - 1)]
        if kind == 6:
            return fdp.ConsumeRegularFloat()
        if kind == 7:
            return [fdp.ConsumeIntInRange(-1, 300) for _ in range(fdp.ConsumeIntInRange(0, 32))]
        if kind in (8, 9, 10):
            return {KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]: value(depth + 1)
                    for _ in range(fdp.ConsumeIntInRange(0, 5))}
        return [value(depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]

    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        args.append(value(0))
    return args
