"""python-socketio's AsyncServer on our Engine.IO transport.

Two behaviours differ from stock python-socketio, both on purpose:
- a refused CONNECT (bad token, unknown namespace) closes the Engine.IO session after the
  CONNECT_ERROR is delivered (protocol §2: "the refused connection is closed");
- namespaces other than "/" are refused with the reference server's error body.
"""
from __future__ import annotations

import contextvars

import socketio
from socketio.exceptions import ConnectionRefusedError as Refused

from .engine.server import EngineOptions, EngineServer

# Whether the event being handled asked for an acknowledgement: a failure is then answered
# in the ack, otherwise with an `error` event (protocol §3, §4). Handlers run inline
# (async_handlers=False), so the context variable is that of the event being handled.
ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)


class SocketServer(socketio.AsyncServer):
    def __init__(self, engine_options: EngineOptions, client_manager=None, **kwargs):
        self._engine_options = engine_options
        super().__init__(
            client_manager=client_manager,
            async_mode="tornado",
            # one event at a time per client, in order: the engine already runs each
            # session's messages on their own task, so handlers never block reading
            async_handlers=False,
            namespaces="*",
            engine_options=engine_options,
            **kwargs,
        )
        self.on("connect", self._refuse_namespace, namespace="*")

    def _engineio_server_class(self):
        return EngineServer

    @property
    def engine(self) -> EngineServer:
        return self.eio

    async def _refuse_namespace(self, namespace, sid, environ, auth=None):
        raise Refused("Invalid namespace")

    async def _handle_event(self, eio_sid, namespace, id, data):
        token = ack_requested.set(id is not None)
        try:
            await super()._handle_event(eio_sid, namespace, id, data)
        finally:
            ack_requested.reset(token)

    async def _handle_connect(self, eio_sid, namespace, data):
        await super()._handle_connect(eio_sid, namespace, data)
        # a CONNECT that was refused leaves the session without any namespace: close it
        # (the queued CONNECT_ERROR is flushed to the client first)
        if not any(
            self.manager.sid_from_eio_sid(eio_sid, ns) is not None
            for ns in list(self.manager.get_namespaces())
        ):
            await self.eio.disconnect(eio_sid)
