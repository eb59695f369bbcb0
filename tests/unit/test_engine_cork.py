"""Corked output (issue 18): the acks written during one step of a session's inbox leave in
one write, in order, before the task suspends; control frames never overtake them."""
import asyncio

from rt.engine.contracts import EngineStats
from rt.engine.inbox import Inbox
from rt.engine.protocol import message_frame, websocket_frame
from rt.engine.websocket import WebSocket


class Transport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data):
        self.writes.append(bytes(data))

    def writelines(self, parts):
        self.writes.append(b"".join(bytes(p) for p in parts))

    def get_write_buffer_size(self):
        return self.buffered

    def get_extra_info(self, name):
        return None

    def close(self):
        pass


class Listener:
    sid = "s1"

    def __init__(self):
        self.overflows = []

    def on_ws_overflow(self, ws, unsent):
        self.overflows.append(unsent)

    def on_ws_closed(self, ws):
        pass


def websocket(max_outbound=1 << 20):
    ws = WebSocket(1 << 20, max_outbound, EngineStats())
    ws.connection_made(Transport())
    ws.session = Listener()
    return ws


def test_corked_frames_leave_in_one_write_in_order():
    ws = websocket()
    assert ws.cork() and not ws.cork()  # once
    for i in range(3):
        ws.send_message_text(b"3%d[]" % i)
    assert ws.transport.writes == []
    assert ws.unsent() == sum(len(message_frame(b"3%d[]" % i)) for i in range(3))
    ws.uncork()
    assert ws.transport.writes == [b"".join(message_frame(b"3%d[]" % i) for i in range(3))]
    assert ws.unsent() == 0
    ws.send_message_text(b"34[]")  # uncorked: written at once
    assert ws.transport.writes[-1] == message_frame(b"34[]")


def test_a_control_frame_follows_what_was_corked():
    async def main():
        ws = websocket()
        ws.cork()
        ws.send_message_text(b"30[]")
        ws.close_transport(1000, "bye")
        ws.send_message_text(b"31[]")  # closing: dropped
        ws.uncork()
        ws._close_timer.cancel()
        return ws.transport.writes

    first, close = asyncio.run(main())  # nothing held back, nothing written twice
    assert first == message_frame(b"30[]")
    assert close[0] == 0x88  # the close frame, after the data


def test_corked_output_counts_against_the_outbound_limit():
    ws = websocket(max_outbound=64)
    ws.cork()
    ws.send_message_text(b"x" * 40)
    assert ws.session.overflows == []
    ws.send_message_text(b"x" * 40)
    assert ws.session.overflows and ws.session.overflows[0] > 64


def test_large_frames_are_not_joined():
    ws = websocket()
    ws.cork()
    ws.send_message_text(b"30[]")
    ws.send_wire_frame((b"\x82\x7f" + (8).to_bytes(8, "big"), bytearray(b"12345678")))
    ws.uncork()
    assert ws.transport.writes == [message_frame(b"30[]") + b"\x82\x7f" + (8).to_bytes(8, "big")
                                   + b"12345678"]


class Owner:
    """A session as its inbox sees it, writing one ack per message to a corked socket."""

    def __init__(self, ws, server):
        self.sid = "s1"
        self.server = server
        self.closed = False
        self.close_reason = None
        self.ws = ws

    def cork(self):
        return self.ws if self.ws.cork() else None

    def close(self, *args, **kwargs):
        self.closed = True


class Server:
    def __init__(self, ws, pause_on=()):
        self.ws = ws
        self.counters = EngineStats()
        self.pause_on = pause_on

    @property
    def message_handler(self):
        return self.on_message

    async def on_message(self, sid, data):
        if data in self.pause_on:
            await asyncio.sleep(0.01)  # a handler that waits for I/O
            current = asyncio.current_task()
            assert current is not None  # handlers run inside the consumer task
        self.ws.send_message_text(b"3" + data.encode() + b"[]")

    async def fire_disconnect(self, sid, reason):
        pass


def test_an_inbox_turn_is_written_once_and_flushed_before_waiting():
    async def main():
        ws = websocket()
        server = Server(ws, pause_on=("3",))
        inbox = Inbox(Owner(ws, server), lambda: None)
        for i in range(6):
            inbox.put(str(i))
        while inbox.consumer is not None:
            await asyncio.sleep(0.005)
        return ws.transport.writes

    writes = asyncio.run(main())
    acks = [message_frame(b"3%d[]" % i) for i in range(6)]
    # 0..2 in the first step, flushed before "3" waits; after its wait the turn's time is
    # up (the task yields: "3" goes out), then the rest: never an ack held while it waits
    assert writes == [b"".join(acks[:3]), acks[3], b"".join(acks[4:])]


async def end_of_turn():
    """The end of a turn that began in this one: the turn after the next read of the
    sockets (a task's sleep(0) resumes it after the callbacks queued before it)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_frames_written_in_one_turn_of_the_loop_leave_together_at_its_end():
    """Several broadcasts that reach a client in one turn (emits and typing events that
    arrived together) cost it one write, in order, at the end of the turn; the next turn
    starts afresh, and a control frame still follows what was written before it."""
    async def main():
        a, b = websocket(), websocket()
        for i in range(3):
            a.send_message_text(b"4%d[]" % i)
        b.send_message_text(b"40[]")
        assert a.transport.writes == [] and b.transport.writes == []
        assert a.unsent() == sum(len(message_frame(b"4%d[]" % i)) for i in range(3))
        await end_of_turn()
        assert a.transport.writes == [b"".join(message_frame(b"4%d[]" % i) for i in range(3))]
        assert b.transport.writes == [message_frame(b"40[]")]
        assert a.unsent() == 0
        a.send_message_text(b"43[]")
        a.close_transport(1000, "bye")  # what was written first goes first
        a._close_timer.cancel()
        assert a.transport.writes[1] == message_frame(b"43[]") and a.transport.writes[2][0] == 0x88
        await end_of_turn()
        assert len(a.transport.writes) == 3  # nothing written twice at the end of the turn

    asyncio.run(main())


def test_what_the_next_turn_writes_joins_the_write():
    """The turn ends one turn of the loop after it began: a broadcast handled in between
    (an event that arrived while the last one was being written) leaves in the same write,
    after the first; the turn after that is a new one."""
    async def main():
        a = websocket()
        a.send_message_text(b"40[]")
        await asyncio.sleep(0)  # the next turn: the first frame still waits
        assert a.transport.writes == []
        a.send_message_text(b"41[]")
        await asyncio.sleep(0)  # the end of the turn
        assert a.transport.writes == [message_frame(b"40[]") + message_frame(b"41[]")]
        a.send_message_text(b"42[]")
        await end_of_turn()
        assert a.transport.writes[1:] == [message_frame(b"42[]")]

    asyncio.run(main())


def test_a_turn_of_a_stopped_loop_holds_nothing_back_in_the_next():
    """A loop that stops before the end of its turn (process shutdown) leaves that turn
    behind; the sockets of the next loop get turns of their own, ended there."""
    old, new = websocket(), websocket()
    loop = asyncio.new_event_loop()

    def send_and_stop():
        old.send_message_text(b"40[]")
        loop.stop()  # the end of this turn would run two iterations later: never

    loop.call_soon(send_and_stop)
    loop.run_forever()
    loop.close()
    assert old.transport.writes == []

    async def send():
        new.send_message_text(b"41[]")
        await end_of_turn()

    asyncio.run(send())
    assert new.transport.writes == [message_frame(b"41[]")]


HANDSHAKE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


def test_the_handshake_answer_leaves_with_the_open_packet():
    """The 101 answer waits for the end of the turn like a frame: the open packet written in
    the same turn goes in the same write, after it (one segment for the client to read)."""
    async def main():
        ws = websocket()
        ws.write_handshake(HANDSHAKE)
        ws.send_frame('0{"sid":"abc"}')
        assert ws.transport.writes == []
        await end_of_turn()
        return ws.transport.writes

    assert asyncio.run(main()) == [HANDSHAKE + websocket_frame('0{"sid":"abc"}')]


def test_a_websocket_closed_at_once_still_sends_its_handshake_first():
    """A session refused right after the handshake: the 101, then the close frame."""
    async def main():
        ws = websocket()
        ws.write_handshake(HANDSHAKE)
        ws.close_transport(1008, "refused")
        ws._close_timer.cancel()
        await end_of_turn()
        return ws.transport.writes

    handshake, close = asyncio.run(main())
    assert handshake == HANDSHAKE and close[0] == 0x88
