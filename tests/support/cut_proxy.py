"""A TCP proxy on the test's event loop whose connections can be cut at once, like a
network change under a browser: `cut()` aborts every open connection (both sides see a
reset); `strand()` aborts only the client sides and leaves the server's connections open
and silent (a half-open TCP the server has not noticed yet). New connections go through as
before; `target_port` may be changed (another node)."""
from __future__ import annotations

import asyncio
import contextlib

HOST = "127.0.0.1"


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._stranded: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.target_port), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        self._pairs.append((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            if dst not in self._stranded:
                dst.transport.abort()

    def cut(self) -> None:
        """Abort every open connection."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def strand(self) -> None:
        """Abort the client sides only: the server keeps a connection nobody reads."""
        for client, upstream in self._pairs:
            if client in self._writers:
                self._stranded.add(upstream)
                self._writers.discard(client)
                client.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        for upstream in self._stranded:
            upstream.transport.abort()
        self._stranded.clear()
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
