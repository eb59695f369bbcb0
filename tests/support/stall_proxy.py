"""A TCP proxy that makes a real server slow or silent, switchable at run time.

`StallProxy(port).start()` listens on a free port of 127.0.0.1 and forwards every
connection to 127.0.0.1:`port` (a redis-server that a fixture of redis_servers.py started;
never the machine's Redis on 6379). Its modes:

- `pass_through()`: bytes flow both ways as they arrive;
- `delay(ms)`: each chunk is forwarded `ms` milliseconds after it arrived, in order, in
  both directions (a round trip takes 2 x ms more);
- `black_hole()`: every connection, open or new, is accepted and read, and nothing is
  forwarded or answered: a server that stopped answering without closing anything.

A connection that went through a black hole stays one after `pass_through()`: its bytes
were thrown away, so its stream is broken for good, like a connection whose peer lost its
state during a partition. Only new connections carry traffic again; a client must notice
the dead ones by its own timeouts. `accepted` counts connections, so a test can see that
a client reconnected.

The proxy runs its own event loop in a daemon thread, so that it keeps working while the
test's loop is blocked (starting an appliance process waits synchronously). Every wait
here is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

HOST = "127.0.0.1"
WAIT = 5.0  # seconds for any control operation or upstream connect
CHUNK = 65536


class _Conn:
    """One proxied connection: the client side, the upstream side, and its fate."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.swallowed = False

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()


class StallProxy:
    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port: int | None = None
        self.mode = "pass"
        self.delay_s = 0.0
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="stall-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> StallProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, HOST, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        assert self.port != 6379
        return self

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def pass_through(self) -> None:
        self._set("pass", 0.0)

    def delay(self, ms: float) -> None:
        self._set("pass", ms / 1000)

    def black_hole(self) -> None:
        self._set("hole", 0.0)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> StallProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _set(self, mode: str, delay_s: float) -> None:
        async def apply() -> None:
            self.mode, self.delay_s = mode, delay_s
            if mode == "hole":
                for conn in self._conns:
                    conn.swallowed = True
        self._call(apply())

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()
        if self._tasks:  # let the handlers see their sockets closed and finish
            await asyncio.wait(list(self._tasks), timeout=WAIT)
        self._conns.clear()

    # ------------------------------------------------------------------ traffic
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if self.mode == "hole":
                conn.swallowed = True
                await self._drain(reader)
                return
            try:
                up_reader, conn.upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), WAIT)
            except (TimeoutError, OSError):
                return
            await asyncio.gather(self._pipe(reader, conn.upstream, conn),
                                 self._pipe(up_reader, writer, conn))
        finally:
            conn.close()
            self._conns.discard(conn)
            self._tasks.discard(task)

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        """Read and forget until the peer closes."""
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn: _Conn) -> None:
        """One direction. Chunks wait in a queue until their time, so the added latency is
        the delay, not the delay times the chunks queued before."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not conn.swallowed:
                    writer.write(data)
                    await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(CHUNK):
                if not conn.swallowed:
                    queue.put_nowait((time.monotonic() + self.delay_s, data))
        except OSError:
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, WAIT)
            conn.close()  # one side closed: close the other (the peer sees it at once)
