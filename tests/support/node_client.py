"""Drive real Node clients (socket.io-client 4.8, yjs 13.6) from asyncio tests.

The Node side is ``tests/node/driver.mjs``, a long-running process spoken to in
JSON lines over stdin/stdout (see that file for the wire protocol).

Typical use (the ``node_driver`` fixture in ``tests.support.node_fixtures`` does
the start/close part)::

    drv = await NodeDriver.start()
    try:
        sock = await drv.connect("alice", "http://127.0.0.1:8080",
                                 path="/ws/socket.io", transports=["websocket"],
                                 auth={"token": tok}, reconnection=False, forceNew=True)
        ack = await sock.emit("join", {"room": "r"}, ack=True, timeout=5)
        args = await sock.wait_for("user-list", timeout=5)
        await sock.disconnect()
    finally:
        await drv.close()

Binary values: Python ``bytes``/``bytearray``/``memoryview`` are sent as
``{"$bytes": [...]}`` and every ``{"$bytes": [...]}`` coming back is turned into
``bytes`` (recursively, see :func:`to_wire` / :func:`from_wire`).

Every wait has a timeout and raises :class:`asyncio.TimeoutError` with a message
that says what was waited for and what did arrive.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
DRIVER_SCRIPT = NODE_DIR / "driver.mjs"
ECHO_SERVER_SCRIPT = NODE_DIR / "echo_server.mjs"

INSTALL_HINT = (
    "Node test clients are not installed: run `make node-deps` "
    "(or `cd tests/node && npm ci`); needs node >= 18 and npm on PATH"
)

# Lines can carry large Yjs states as JSON int arrays.
_LINE_LIMIT = 256 * 1024 * 1024
_STDERR_TAIL = 50


# ------------------------------------------------------------------ errors ---


class NodeDriverError(RuntimeError):
    """The driver answered ok:false, or the driver process is gone.

    ``reply`` holds the whole reply line (for a connect_error it has the extra
    keys ``connect_error`` (the error message) and ``data`` (err.data)).
    """

    def __init__(self, message: str, reply: dict | None = None):
        super().__init__(message)
        self.reply = reply or {}


# ----------------------------------------------------------- availability ---


def node_executable() -> str | None:
    return shutil.which("node")


def node_available() -> str | None:
    """None when node and the npm packages are there, else an install hint."""
    if node_executable() is None:
        return "`node` is not on PATH. " + INSTALL_HINT
    for pkg in ("socket.io-client", "yjs", "socket.io"):
        if not (NODE_DIR / "node_modules" / pkg / "package.json").is_file():
            return f"tests/node/node_modules/{pkg} is missing. " + INSTALL_HINT
    return None


# ------------------------------------------------------------ bytes codec ---


def to_wire(value: Any) -> Any:
    """Python -> JSON for the driver: bytes-like become {"$bytes": [ints]}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": list(bytes(value))}
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def from_wire(value: Any) -> Any:
    """JSON from the driver -> Python: {"$bytes": [ints]} becomes bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), list):
            return bytes(value["$bytes"])
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------ per-socket events ---


@dataclass
class Received:
    """One notification for a client: kind is 'recv', 'disconnect', 'upgrade',
    'upgrade_error', 'open', 'connect', 'connect_error' or 'reconnect'."""

    kind: str
    ev: str | None
    args: list
    raw: dict
    consumed: bool = False


@dataclass(eq=False)
class _Waiter:
    kind: str
    ev: str | None
    predicate: Callable[[list], bool] | None
    future: asyncio.Future
    description: str = ""

    def matches(self, rec: Received) -> bool:
        if rec.kind != self.kind or (self.ev is not None and rec.ev != self.ev):
            return False
        return self.predicate is None or bool(self.predicate(rec.args))


@dataclass(eq=False)
class NodeSocket:
    """Python view of one socket.io-client socket held by the driver.

    ``sid`` and ``connect_transport`` are from the connect reply.
    """

    driver: NodeDriver
    name: str
    url: str
    sid: str | None = None
    connect_transport: str | None = None
    records: list[Received] = field(default_factory=list)
    _waiters: list[_Waiter] = field(default_factory=list)

    # -- fed by the driver's reader task
    def _deliver(self, rec: Received) -> None:
        self.records.append(rec)
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            try:
                hit = waiter.matches(rec)
            except Exception as exc:  # a predicate bug: fail that wait, not the reader
                self._waiters.remove(waiter)
                waiter.future.set_exception(exc)
                continue
            if hit:
                self._waiters.remove(waiter)
                rec.consumed = True
                waiter.future.set_result(rec)
                return

    def _fail_waiters(self, exc: BaseException) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        self._waiters.clear()

    async def _wait(
        self,
        kind: str,
        ev: str | None,
        predicate: Callable[[list], bool] | None,
        timeout: float,
    ) -> Received:
        probe = _Waiter(kind, ev, predicate, asyncio.get_running_loop().create_future())
        for rec in self.records:
            if not rec.consumed and probe.matches(rec):
                rec.consumed = True
                return rec
        if self.driver._dead is not None:
            raise self.driver._dead
        self._waiters.append(probe)
        try:
            return await asyncio.wait_for(probe.future, timeout)
        except TimeoutError:
            what = f"{kind} {ev!r}" if ev is not None else kind
            if predicate is not None:
                what += " matching the predicate"
            raise TimeoutError(
                f"node client {self.name!r}: no {what} within {timeout}s; "
                f"got so far: {self._summary()}"
            ) from None
        finally:
            if probe in self._waiters:
                self._waiters.remove(probe)

    def _summary(self) -> str:
        if not self.records:
            return "nothing"
        counts = collections.Counter(
            f"{r.kind}:{r.ev}" if r.kind == "recv" else f"{r.kind}:{_short(r.args, 80)}"
            for r in self.records
        )
        return ", ".join(f"{k} x{n}" for k, n in counts.items())

    # -- public API
    async def emit(self, ev: str, *args: Any, ack: bool = True, timeout: float = 5) -> list | None:
        """Emit ``ev`` with ``args``.

        With ``ack=True`` waits (``timeout`` seconds, enforced by
        socket.io-client's ``socket.timeout(ms)``) and returns the list of ack
        arguments (``[0]`` is what ``emitWithAck`` would resolve with); an ack
        timeout or a disconnect raises :class:`NodeDriverError`. With
        ``ack=False`` returns None once the client has emitted.
        """
        reply = await self.driver.request(
            "emit",
            name=self.name,
            ev=ev,
            args=list(args),
            ack=ack,
            timeout_ms=int(timeout * 1000),
            timeout=timeout + 5,
        )
        return reply.get("args", []) if ack else None

    async def wait_for(
        self,
        ev: str,
        predicate: Callable[[list], bool] | None = None,
        timeout: float = 5,
    ) -> list:
        """Args (a list) of the first not yet consumed received ``ev`` for
        which ``predicate(args)`` is true; events that arrived before the call
        count. Consumes it."""
        return (await self._wait("recv", ev, predicate, timeout)).args

    def received(self, ev: str | None = None) -> list:
        """All args lists received for ``ev`` so far (consumed or not); with
        ``ev=None``, ``(ev, args)`` pairs of everything received."""
        if ev is None:
            return [(r.ev, r.args) for r in self.records if r.kind == "recv"]
        return [r.args for r in self.records if r.kind == "recv" and r.ev == ev]

    def clear_received(self) -> None:
        self.records.clear()

    async def wait_disconnect(self, timeout: float = 5) -> str:
        """Reason of the next not yet consumed 'disconnect' notification
        (e.g. 'io server disconnect', 'transport close')."""
        return (await self._wait("disconnect", None, None, timeout)).raw.get("reason")

    async def wait_upgrade(self, timeout: float = 5) -> str:
        """Transport name of the next not yet consumed engine 'upgrade'."""
        return (await self._wait("upgrade", None, None, timeout)).raw.get("transport")

    async def wait_notification(self, kind: str, timeout: float = 5) -> dict:
        """Raw next not yet consumed notification of ``kind``: 'open' (engine
        opened, with its first transport), 'connect' (a later re-connect),
        'connect_error' (after the first), 'reconnect', 'upgrade_error', ..."""
        return (await self._wait(kind, None, None, timeout)).raw

    async def transport(self) -> str | None:
        """Current engine transport name ('polling' / 'websocket'), None if none."""
        return (await self.driver.request("transport", name=self.name)).get("transport")

    async def state(self) -> dict:
        """{'transport', 'connected', 'sid'} as the client sees them now."""
        reply = await self.driver.request("transport", name=self.name)
        return {k: reply.get(k) for k in ("transport", "connected", "sid")}

    async def disconnect(self) -> None:
        """Client-side disconnect; forgets the client in the driver."""
        if self.driver._dead is None:
            await self.driver.request("disconnect", name=self.name)
        if self.driver._sockets.get(self.name) is self:
            del self.driver._sockets[self.name]


# ----------------------------------------------------------------- driver ---


class NodeDriver:
    """One ``node tests/node/driver.mjs`` process."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.versions: dict = {}
        self.notifications: list[dict] = []  # every notification, in order
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._sockets: dict[str, NodeSocket] = {}
        self._ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._dead: NodeDriverError | None = None
        self._closing = False
        self._write_lock = asyncio.Lock()
        self._stdout_task = asyncio.create_task(self._read_stdout(), name="node-driver-stdout")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name="node-driver-stderr")

    # -- lifecycle
    @classmethod
    async def start(
        cls,
        *,
        node: str | None = None,
        script: Path | str = DRIVER_SCRIPT,
        env: dict | None = None,
        startup_timeout: float = 15,
    ) -> NodeDriver:
        hint = node_available() if node is None else None
        if hint is not None:
            raise RuntimeError(hint)
        node = node or node_executable()
        proc = await asyncio.create_subprocess_exec(
            node,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(NODE_DIR),
            env={**os.environ, **(env or {})},
            limit=_LINE_LIMIT,
        )
        drv = cls(proc)
        try:
            ready = await asyncio.wait_for(asyncio.shield(drv._ready), startup_timeout)
        except TimeoutError:
            await drv.close()
            raise TimeoutError(
                f"node driver sent no 'ready' line within {startup_timeout}s; "
                f"stderr: {drv._stderr_text()}"
            ) from None
        except BaseException:
            await drv.close()
            raise
        drv.versions = ready.get("versions", {})
        return drv

    async def __aenter__(self) -> NodeDriver:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self, timeout: float = 5) -> None:
        """Ask the driver to exit, kill it if it does not, reap it."""
        if self._closing:
            return
        self._closing = True
        proc = self.proc
        if proc.returncode is None and self._dead is None:
            try:
                await self.request("exit", timeout=2)
            except Exception:
                pass
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        # Readers end on EOF; bound it anyway (a grandchild could hold the pipe).
        tasks = [self._stdout_task, self._stderr_task]
        _, still = await asyncio.wait(tasks, timeout=timeout)
        for task in still:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.stdin is not None:
            try:
                await proc.stdin.wait_closed()
            except Exception:
                pass
        self._mark_dead(NodeDriverError("node driver was closed"))

    # -- IO
    def _stderr_text(self) -> str:
        return " | ".join(self.stderr_tail) or "<empty>"

    def _mark_dead(self, exc: NodeDriverError) -> None:
        if self._dead is None:
            self._dead = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._dead)
        self._pending.clear()
        if not self._ready.done():
            self._ready.set_exception(self._dead)
            self._ready.exception()  # retrieved: no "never retrieved" warning
        for sock in self._sockets.values():
            sock._fail_waiters(self._dead)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.stderr_tail.append("[stdout, not JSON] " + line.decode("utf-8", "replace").rstrip())
                    continue
                if isinstance(msg, dict):
                    self._dispatch(msg)
        except Exception as exc:  # noqa: BLE001 - report it to every waiter
            self._mark_dead(NodeDriverError(f"node driver reader failed: {exc!r}"))
            return
        # EOF: let stderr finish so the message has the crash text.
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception:
            pass
        rc = self.proc.returncode
        reason = "was closed" if self._closing else "exited unexpectedly"
        self._mark_dead(
            NodeDriverError(f"node driver {reason} (returncode={rc}); stderr: {self._stderr_text()}")
        )

    def _dispatch(self, msg: dict) -> None:
        if "event" in msg and "id" not in msg:
            self.notifications.append(msg)
            kind = msg["event"]
            if kind == "ready":
                if not self._ready.done():
                    self._ready.set_result(msg)
                return
            name = msg.get("name")
            sock = self._sockets.get(name) if isinstance(name, str) else None
            if sock is None:
                return
            if kind == "recv":
                rec = Received(kind, msg.get("ev"), from_wire(msg.get("args") or []), msg)
            else:
                rec = Received(kind, None, [from_wire(msg)], msg)
            sock._deliver(rec)
            return
        fut = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif msg.get("ok") is False:
            # A reply to no request of ours (e.g. driver-side parse error).
            self.stderr_tail.append(f"[unmatched error reply] {msg}")

    async def request(self, cmd: str, *, timeout: float = 10, **fields: Any) -> dict:
        """Send ``{"cmd": cmd, **fields}``; return the decoded ok reply (with
        ``{"$bytes"}`` turned into bytes). ok:false raises NodeDriverError; no
        reply within ``timeout`` raises asyncio.TimeoutError."""
        if self._dead is not None:
            raise self._dead
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        line = json.dumps({**to_wire(fields), "cmd": cmd, "id": rid}, separators=(",", ":"))
        assert self.proc.stdin is not None
        try:
            async with self._write_lock:
                self.proc.stdin.write(line.encode() + b"\n")
                await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._pending.pop(rid, None)
            raise NodeDriverError(f"node driver stdin closed ({exc!r}); stderr: {self._stderr_text()}") from exc
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"node driver: no reply to {cmd!r} (id {rid}) within {timeout}s; "
                f"fields: {_short(fields)}"
            ) from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise NodeDriverError(f"node driver {cmd!r} failed: {reply.get('error')}", reply)
        return from_wire({k: v for k, v in reply.items() if k not in ("id", "ok")})

    # -- sockets
    async def connect(
        self,
        name: str,
        url: str,
        *,
        timeout: float = 10,
        keep_on_error: bool = False,
        **options: Any,
    ) -> NodeSocket:
        """``io(url, options)`` in the driver; waits for 'connect'.

        ``options`` go straight to socket.io-client (path, transports, auth,
        reconnection, forceNew, query, extraHeaders, ...). A 'connect_error'
        raises NodeDriverError whose ``reply`` has ``connect_error`` (message)
        and ``data`` (err.data); the client is then dropped unless
        ``keep_on_error``.
        """
        sock = NodeSocket(self, name, url)
        previous = self._sockets.get(name)
        if previous is not None:
            previous._fail_waiters(NodeDriverError(f"node client {name!r} was replaced"))
        self._sockets[name] = sock  # before the request: events may precede the reply
        try:
            reply = await self.request(
                "connect",
                name=name,
                url=url,
                options=options,
                timeout_ms=int(timeout * 1000),
                keep_on_error=keep_on_error,
                timeout=timeout + 5,
            )
        except BaseException:
            if not keep_on_error and self._sockets.get(name) is sock:
                del self._sockets[name]
            raise
        sock.sid = reply.get("sid")
        sock.connect_transport = reply.get("transport")
        return sock

    def socket(self, name: str) -> NodeSocket:
        return self._sockets[name]

    # -- yjs
    async def ydoc_new(self, doc: str, *, gc: bool | None = None, client_id: int | None = None) -> int:
        fields: dict[str, Any] = {"doc": doc}
        if gc is not None:
            fields["gc"] = gc
        if client_id is not None:
            fields["client_id"] = client_id
        return (await self.request("ydoc_new", **fields))["client_id"]

    async def ydoc_drop(self, doc: str) -> None:
        await self.request("ydoc_drop", doc=doc)

    async def ydoc_insert(self, doc: str, index: int, text: str, text_name: str = "") -> bytes:
        """Insert into ``doc.getText(text_name)``; returns the update it produced."""
        reply = await self.request("ydoc_insert", doc=doc, text_name=text_name, index=index, text=text)
        return reply["update"]

    async def ydoc_delete(self, doc: str, index: int, length: int, text_name: str = "") -> bytes:
        reply = await self.request("ydoc_delete", doc=doc, text_name=text_name, index=index, length=length)
        return reply["update"]

    async def ydoc_apply(self, doc: str, update: bytes) -> None:
        await self.request("ydoc_apply", doc=doc, update=update)

    async def ydoc_text(self, doc: str, text_name: str = "") -> str:
        return (await self.request("ydoc_text", doc=doc, text_name=text_name))["text"]

    async def ydoc_state(self, doc: str, state_vector: bytes | None = None) -> bytes:
        """``Y.encodeStateAsUpdate(doc[, state_vector])``."""
        fields: dict[str, Any] = {"doc": doc}
        if state_vector is not None:
            fields["state_vector"] = state_vector
        return (await self.request("ydoc_state", **fields))["update"]

    async def ydoc_state_vector(self, doc: str) -> bytes:
        return (await self.request("ydoc_state_vector", doc=doc))["state_vector"]

    async def ydoc_initialize(self, name: str, doc: str, document_id: str, text: str,
                              timeout: float = 5) -> dict:
        """open-webui 0.12's seed of an empty note from client ``name``: ``text`` in a
        fresh doc's XmlFragment 'prosemirror', sent with ``initialize: true``; the ack
        applied to ``doc`` as the editor does. Returns ``{seed, ack, applied,
        apply_error}`` (``ack`` as received: a list of ints, bytes or None)."""
        return await self.request("ydoc_initialize", name=name, doc=doc, document_id=document_id,
                                  text=text, timeout_ms=int(timeout * 1000), timeout=timeout + 5)

    async def ydoc_xml(self, doc: str) -> str:
        """``doc.getXmlFragment('prosemirror').toString()``."""
        return (await self.request("ydoc_xml", doc=doc))["xml"]


# ------------------------------------------------- reference Node server ---


class NodeReferenceServer:
    """``node tests/node/echo_server.mjs``: the npm socket.io 4.8 server.

    ``url`` is ``http://127.0.0.1:<port>``; clients must use ``path='/ws/socket.io'``.
    """

    def __init__(self, proc: asyncio.subprocess.Process, info: dict):
        self.proc = proc
        self.info = info
        self.port: int = info["port"]
        self.host: str = info.get("host", "127.0.0.1")
        self.path: str = info.get("path", "/ws/socket.io")
        self.version: str | None = info.get("version")
        self.url = f"http://{self.host}:{self.port}"
        self._stderr_task: asyncio.Task | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)

    @classmethod
    async def start(
        cls,
        script: Path | str = ECHO_SERVER_SCRIPT,
        port: int = 0,
        *,
        startup_timeout: float = 15,
    ) -> NodeReferenceServer:
        node = node_executable()
        if node is None or not (NODE_DIR / "node_modules" / "socket.io" / "package.json").is_file():
            raise RuntimeError("socket.io (server) missing. " + INSTALL_HINT)
        proc = await asyncio.create_subprocess_exec(
            node,
            str(script),
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(NODE_DIR),
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), startup_timeout)
            info = json.loads(line) if line else None
        except (TimeoutError, ValueError):
            info = None
        if not isinstance(info, dict) or "port" not in info:
            err = b""
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            assert proc.stderr is not None
            err = await proc.stderr.read()
            raise RuntimeError(f"{script} did not report its port: {err.decode('utf-8', 'replace')[-2000:]}")
        srv = cls(proc, info)
        srv._stderr_task = asyncio.create_task(srv._read_stderr())
        return srv

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    async def close(self, timeout: float = 5) -> None:
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # the server exits on stdin EOF
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.read()
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(self._stderr_task, timeout)
            except TimeoutError:
                self._stderr_task.cancel()
        if proc.stdin is not None:
            try:
                await proc.stdin.wait_closed()
            except Exception:
                pass

    async def __aenter__(self) -> NodeReferenceServer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
