"""The per-session room index of FanoutMixin answers what python-socketio's scans did."""
import pytest
import socketio

from rt.backends.fanout import FanoutManager

pytestmark = pytest.mark.asyncio


async def manager_with(*eio_sids: str) -> tuple[FanoutManager, list[str]]:
    mgr = FanoutManager()
    socketio.AsyncServer(client_manager=mgr)
    sids = [await mgr.connect(eio_sid, "/") for eio_sid in eio_sids]
    return mgr, sids


async def test_rooms_of_a_session_and_its_sid_room():
    mgr, (a, b) = await manager_with("ea", "eb")
    await mgr.enter_room(a, "/", "user:1")
    await mgr.enter_room(b, "/", "user:1")
    await mgr.enter_room(a, "/", "channel:x")
    assert sorted(mgr.get_rooms(a, "/")) == sorted([a, "user:1", "channel:x"])
    assert sorted(mgr.get_rooms(b, "/")) == sorted([b, "user:1"])
    assert mgr.is_sid_room("/", a) and not mgr.is_sid_room("/", "user:1")
    assert a not in mgr.rooms["/"]  # no dict of its own for the room of a sid
    assert dict(mgr.get_participants("/", a)) == {a: "ea"}
    assert dict(mgr.get_participants("/", "user:1")) == {a: "ea", b: "eb"}
    assert dict(mgr.get_participants("/", [b, "channel:x", "nobody"])) == {a: "ea", b: "eb"}
    assert dict(mgr.get_participants("/", None)) == {a: "ea", b: "eb"}
    assert mgr.has_room("/", a) and mgr.has_room("/", "channel:x")
    assert not mgr.has_room("/", "channel:y") and not mgr.has_room("/other", a)
    with pytest.raises(ValueError):
        mgr.basic_enter_room(a, "/", b)  # nobody enters another session's sid room


async def test_leave_disconnect_and_close_room_leave_nothing_behind():
    mgr, (a, b) = await manager_with("ea", "eb")
    for room in ("user:1", "channel:x", "note:n"):
        await mgr.enter_room(a, "/", room)
    await mgr.enter_room(b, "/", "channel:x")
    await mgr.leave_room(a, "/", "note:n")
    assert "note:n" not in mgr.rooms["/"] and not mgr.in_room(a, "note:n")
    await mgr.close_room("channel:x", "/")
    assert "channel:x" not in mgr.rooms["/"]
    assert sorted(mgr.get_rooms(b, "/")) == [b]
    await mgr.disconnect(a, "/")
    assert mgr.get_rooms(a, "/") == [] and "user:1" not in mgr.rooms["/"]
    assert dict(mgr.get_participants("/", None)) == {b: "eb"}
    await mgr.disconnect(b, "/")
    assert mgr.rooms == {} and mgr._rooms_of == {}


async def test_disconnect_while_connecting_or_disconnecting_clears_the_pending_lists():
    mgr, (a,) = await manager_with("ea")
    b = await mgr.pre_connect("eb", "/")  # refused or gone before its connect completed
    assert mgr.is_pre_connected(b, "/")
    await mgr.disconnect(b, "/")
    assert "/" not in mgr.pending_connect and mgr.get_rooms(b, "/") == []
    mgr.pre_disconnect(a, "/")
    await mgr.disconnect(a, "/")
    assert mgr.pending_disconnect == {} and mgr.rooms == {}


async def test_connected_sid_answers_as_sid_from_eio_sid_and_is_connected_together():
    mgr, (a, b, c) = await manager_with("ea", "eb", "ec")
    mgr.pending_connect.setdefault("/", []).append(b)
    mgr.pending_disconnect.setdefault("/", []).append(c)
    for eio_sid in ("ea", "eb", "ec", "nobody"):
        sid = mgr.sid_from_eio_sid(eio_sid, "/")
        expected = sid if sid is not None and mgr.is_connected(sid, "/") else None
        assert mgr.connected_sid(eio_sid, "/") == expected
    assert mgr.connected_sid("ea", "/") == a  # connected
    assert mgr.connected_sid("eb", "/") is None  # still connecting
    assert mgr.connected_sid("ec", "/") is None  # disconnecting
    assert mgr.connected_sid("ea", "/other") is None  # not in that namespace
