"""The appliance's side of the document host (host.py): starts it, asks it, restarts it.

Requests are written whole, in the order their answers are awaited; the host answers in
that order, so one queue of futures pairs them. When the host ends (it crashed, or was
killed), every waiting request fails with `HostError` and the next one starts a new host:
`generation` tells the documents whose copies lived in the old one that they must load
again.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..core.errors import StoreError
from ..core.tasks import TaskGroup
from .wire import PREFIX_BYTES, WireError, frame, header_length, read_header

log = logging.getLogger("rt.documents")

READ_LIMIT = 1024 * 1024  # pipe buffer before reading pauses: a large state in few turns
STOP_TIMEOUT = 5.0
_generations = itertools.count(1)  # one number per host process, across DocumentHosts


class HostError(StoreError):
    """The document host did not answer: it stopped, failed, or refused the request."""


def host_command() -> list[str]:
    """How to start the host: the one-file binary runs itself with the internal command."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "document-host"]
    return [sys.executable, "-m", "rt.documents.host"]


class DocumentHost:
    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command is not None else host_command()
        self.generation = 0  # the host process now running: a copy lives in one of them
        self._proc: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[tuple[dict, list[bytes]]]] = (
            collections.deque())
        self._start_lock = asyncio.Lock()
        self._tasks = TaskGroup()
        self._closed = False
        self.restarts = 0  # hosts that ended while the appliance ran

    @property
    def running(self) -> bool:
        return self._proc is not None

    async def start(self) -> None:
        """Start the host now (else at the first request)."""
        async with self._start_lock:
            if self._proc is not None:
                return
            if self._closed:
                raise HostError("the document host is stopped")
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=READ_LIMIT)
            self._proc = proc
            self.generation = next(_generations)
            self._tasks.spawn(f"document host {proc.pid} answers", self._answers(proc))

    async def call(self, op: str, document_id: str, parts: Sequence[bytes] = (),
                   **fields: Any) -> tuple[dict[str, Any], list[bytes]]:
        """One request; its answer's header and parts. Raises HostError."""
        if self._proc is None:
            await self.start()
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise HostError("the document host is not running")
        answer = self._send(proc, op, document_id, parts, fields)
        try:
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            pass  # the host is gone: its reader fails the answer
        header, reply = await answer
        if "error" in header:
            raise HostError(f"document host: {header['error']}")
        return header, reply

    def tell(self, op: str, document_id: str) -> None:
        """A request whose answer nobody awaits, written now (so before any later request);
        nothing when no host runs (a new one holds nothing)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        self._send(proc, op, document_id, ()).add_done_callback(_ignore_answer)

    def _send(self, proc: asyncio.subprocess.Process, op: str, document_id: str,
              parts: Sequence[bytes], fields: dict[str, Any] | None = None,
              ) -> asyncio.Future[tuple[dict, list[bytes]]]:
        """Write a request whole; the future its answer will settle."""
        assert proc.stdin is not None
        answer: asyncio.Future[tuple[dict, list[bytes]]] = (
            asyncio.get_running_loop().create_future())
        self._waiting.append(answer)
        proc.stdin.writelines(frame({**(fields or {}), "op": op, "id": document_id},
                                       list(parts)))
        return answer

    async def _answers(self, proc: asyncio.subprocess.Process) -> None:
        """Pair each answer with the oldest waiting request, until the host ends."""
        assert proc.stdout is not None
        why, unreadable = "the document host stopped", False
        try:
            while True:
                prefix = await proc.stdout.readexactly(PREFIX_BYTES)
                head = await proc.stdout.readexactly(header_length(prefix))
                header, sizes = read_header(head)
                parts = [await proc.stdout.readexactly(size) for size in sizes]
                if not self._waiting:
                    raise WireError("an answer nobody asked for")
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result((header, parts))
        except asyncio.IncompleteReadError:
            pass
        except WireError as exc:
            why, unreadable = f"the document host answered unreadably ({exc})", True
        finally:
            self._ended(proc, why, unreadable)

    def _ended(self, proc: asyncio.subprocess.Process, why: str, unreadable: bool) -> None:
        if self._proc is proc:
            self._proc = None
            if not self._closed:
                self.restarts += 1
                log.error("%s (pid %d); documents load again in a new one", why, proc.pid)
        if proc.returncode is None:
            if unreadable:
                # (only then: Popen.kill polls first, and reaping a host that exited on
                # its own behind asyncio's child watcher makes it report an unknown child)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._tasks.spawn(f"document host {proc.pid} reaped", proc.wait())
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(HostError(why))

    async def close(self) -> None:
        """End the host: its input closes, it finishes what it was asked and exits."""
        self._closed = True
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("the document host did not stop within %.0f s; killed", STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await self._tasks.settle(timeout=STOP_TIMEOUT)
        await self._tasks.stop()


def _ignore_answer(answer: asyncio.Future[tuple[dict, list[bytes]]]) -> None:
    if not answer.cancelled():
        answer.exception()  # retrieved: a host that ended is logged where it is noticed
