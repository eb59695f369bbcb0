"""The appliance's side of the document host (host.py): starts it, asks it, restarts it.

Requests are written whole, in the order their answers are awaited; the host answers in
that order, so one queue of futures pairs them. Answers are read piece by piece as they
arrive (wire.FrameReader), so a large state never holds the event loop for long; its parts
are bytearrays, which the socket layers send as they send bytes. When the host ends (it
crashed, or was killed), every waiting request fails with `HostError` and the next one
starts a new host: `generation` tells the documents whose copies lived in the old one that
they must load again.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import Any, cast

from ..core.errors import StoreError
from .wire import FrameReader, WireError, frame

log = logging.getLogger("rt.documents")

STOP_TIMEOUT = 5.0
_generations = itertools.count(1)  # one number per host process, across DocumentHosts

Answer = tuple[dict[str, Any], list[bytearray]]


class HostError(StoreError):
    """The document host did not answer: it stopped, failed, or refused the request."""


def host_command() -> list[str]:
    """How to start the host: the one-file binary runs itself with the internal command."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "document-host"]
    return [sys.executable, "-m", "rt.documents.host"]


class _Process(asyncio.SubprocessProtocol):
    """One host process: its answers in order, its end, its input's flow control."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.waiting: collections.deque[asyncio.Future[Answer]] = collections.deque()
        self.transport: asyncio.SubprocessTransport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not derive from asyncio's classes: no isinstance check)
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if self.ended.done() or not isinstance(data, bytes):
            return
        try:
            answers = self.reader.feed(data)
        except WireError as exc:
            self.end(f"the document host answered unreadably ({exc})", unreadable=True)
            return
        for answer in answers:
            if not self.waiting:
                self.end("the document host answered what nobody asked", unreadable=True)
                return
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(answer)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.end("the document host stopped")

    def process_exited(self) -> None:
        self.end("the document host stopped")
        if not self.exited.done():
            self.exited.set_result(None)
        if self.transport is not None:
            self.transport.close()  # its pipes (the process is reaped: nothing to kill)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def end(self, why: str, unreadable: bool = False) -> None:
        """No more answers: every waiting request fails."""
        if not self.ended.done():
            self.ended.set_result(why)
        self.writable.set()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(HostError(why))
        if unreadable and self.transport is not None and not self.exited.done():
            # only then: killing polls first, and reaping a host that exited on its own
            # behind asyncio's child watcher makes it report an unknown child
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()


class DocumentHost:
    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command is not None else host_command()
        self.generation = 0  # the host process now running: a copy lives in one of them
        self._process: _Process | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self.restarts = 0  # hosts that ended while the appliance ran

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.ended.done()

    @property
    def pid(self) -> int | None:
        process = self._process
        transport = process.transport if process is not None else None
        return transport.get_pid() if transport is not None else None

    async def start(self) -> None:
        """Start the host now (else at the first request)."""
        async with self._start_lock:
            if self.running:
                return
            if self._closed:
                raise HostError("the document host is stopped")
            _, process = await asyncio.get_running_loop().subprocess_exec(
                _Process, *self.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=None)
            self._process = process
            self.generation = next(_generations)
            process.ended.add_done_callback(lambda ended: self._ended(process, ended.result()))

    async def call(self, op: str, document_id: str, parts: Sequence[bytes | bytearray] = (),
                   **fields: Any) -> Answer:
        """One request; its answer's header and parts. Raises HostError."""
        if not self.running:
            await self.start()
        process = self._process
        if process is None:
            raise HostError("the document host is not running")
        answer = self._send(process, {**fields, "op": op, "id": document_id}, parts)
        await process.writable.wait()  # the host reads what it was sent before more comes
        header, reply = await answer
        if "error" in header:
            raise HostError(f"document host: {header['error']}")
        return header, reply

    def tell(self, op: str, document_id: str) -> None:
        """A request whose answer nobody awaits, written now (so before any later request);
        nothing when no host runs (a new one holds nothing)."""
        process = self._process
        if process is not None and self.running:
            self._send(process, {"op": op, "id": document_id}, ()).add_done_callback(
                _ignore_answer)

    def _send(self, process: _Process, header: dict[str, Any],
              parts: Sequence[bytes | bytearray]) -> asyncio.Future[Answer]:
        """Write a request whole; the future its answer will settle."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if process.ended.done():
            answer.set_exception(HostError(process.ended.result()))
            return answer
        process.waiting.append(answer)
        assert process.transport is not None
        stdin = cast(asyncio.WriteTransport, process.transport.get_pipe_transport(0))
        stdin.writelines(frame(header, list(parts)))
        return answer

    def _ended(self, process: _Process, why: str) -> None:
        if self._process is process and not self._closed:
            self.restarts += 1
            log.error("%s (pid %s); documents load again in a new one", why,
                      process.transport.get_pid() if process.transport else "?")

    async def close(self) -> None:
        """End the host: its input closes, it finishes what it was asked and exits."""
        self._closed = True
        process = self._process
        if process is None or process.transport is None:
            return
        transport = process.transport
        stdin = transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(process.exited), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("the document host did not stop within %.0f s; killed", STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                transport.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.exited), STOP_TIMEOUT)
        transport.close()


def _ignore_answer(answer: asyncio.Future[Answer]) -> None:
    if not answer.cancelled():
        answer.exception()  # retrieved: a host that ended is logged where it is noticed
