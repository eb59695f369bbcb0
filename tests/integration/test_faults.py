"""Faults of the box itself (issue 8): a full disk, a read-only disk, a locked database.
Each gives clear errors and a 503 from /readyz, corrupts nothing, and heals by itself when
the cause goes away. The disks are real: small tmpfs file systems mounted for the test."""
import asyncio
import contextlib
import os
import sqlite3
import subprocess
import threading

import pytest

from tests.support.appliance import running

pytestmark = pytest.mark.asyncio


@contextlib.contextmanager
def small_disk(path, size="4m"):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Write a filler file until the file system is full."""
    filler = path / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


async def wait_ready(h, expected: int, timeout: float = 10.0):
    for _ in range(int(timeout / 0.1)):
        status, body = await h.api("GET", "/readyz", key=None)
        if status == expected:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never became {expected}: {status} {body}")


def integrity(db_path) -> str:
    with sqlite3.connect(db_path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


async def test_disk_full_then_space_returns(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        async with running(tmp_path, data_dir=disk) as h:
            assert (await h.api("PUT", "/api/v1/users/a", {"name": "Ann"}))[0] == 200
            client = await h.connect(h.token("a"))
            filler = fill(disk)
            status, body = await h.api("PUT", "/api/v1/users/b", {"name": "Bob"})
            assert status == 503 and body["error"] == "unavailable", (status, body)
            body = await wait_ready(h, 503)
            assert body["status"] == "unavailable" and body["reason"]
            # live connections keep working on what needs no write
            assert await client.call("user-join", {}, timeout=5) == {"id": "a", "name": "Ann"}
            filler.unlink()
            await wait_ready(h, 200)
            assert (await h.api("PUT", "/api/v1/users/b", {"name": "Bob"}))[0] == 200
            assert (await h.api("GET", "/api/v1/users/a"))[1]["name"] == "Ann"
        assert integrity(disk / "rt-appliance.sqlite3") == "ok"


@contextlib.contextmanager
def immutable(*paths):
    """Make files read-only for everybody, root and open file descriptors included
    (ext4's immutable flag): what a disk remounted read-only does to the store."""
    paths = [p for p in paths if p.exists()]
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"chattr +i not possible here: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False)


async def test_read_only_store_then_writable_again(tmp_path):
    async with running(tmp_path) as h:
        assert (await h.api("PUT", "/api/v1/users/a", {"name": "Ann"}))[0] == 200
        data = tmp_path / "data"
        db = data / "rt-appliance.sqlite3"
        # not the -shm file: SQLite maps it into memory, and nothing makes a live mapping
        # read-only (a disk cannot be remounted read-only while files are open for writing)
        with immutable(data, db, db.with_name(db.name + "-wal")):
            status, body = await h.api("PUT", "/api/v1/users/b", {"name": "Bob"})
            assert status == 503 and "store unavailable" in body["message"]
            await wait_ready(h, 503)
        await wait_ready(h, 200)
        assert (await h.api("PUT", "/api/v1/users/b", {"name": "Bob"}))[0] == 200
        assert (await h.api("GET", "/api/v1/users/a"))[1]["name"] == "Ann"
    assert integrity(tmp_path / "data" / "rt-appliance.sqlite3") == "ok"


async def test_locked_database_waits_then_refuses_then_heals(tmp_path):
    async with running(tmp_path) as h:
        db_path = tmp_path / "data" / "rt-appliance.sqlite3"
        release = threading.Event()
        locked = threading.Event()

        def hold_lock(seconds: float) -> None:
            other = sqlite3.connect(db_path, timeout=1)
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(seconds)
            other.rollback()
            other.close()

        # a short lock (another process writing): the write waits for it and succeeds
        thread = threading.Thread(target=hold_lock, args=(0.5,))
        thread.start()
        locked.wait(5)
        assert (await h.api("PUT", "/api/v1/users/a", {"name": "Ann"}))[0] == 200
        thread.join(5)
        # a lock held past the busy timeout: a clear 503, then recovery once it is gone
        locked.clear()
        thread = threading.Thread(target=hold_lock, args=(15,))
        thread.start()
        locked.wait(5)
        try:
            status, body = await h.api("PUT", "/api/v1/users/b", {"name": "Bob"})
            assert status == 503 and "locked" in body["message"]
        finally:
            release.set()
            thread.join(5)
        assert (await h.api("PUT", "/api/v1/users/b", {"name": "Bob"}))[0] == 200
        await wait_ready(h, 200)
