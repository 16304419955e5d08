"""The SQLite store's connection thread: writes queued together share one transaction, yet
each one succeeds or fails alone, and a broken transaction reaches every caller in it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from comfyui_server.plugins.database.sqlite_thread import SqliteThread


@pytest.fixture
async def writer(tmp_path):
    thread = SqliteThread(
        str(tmp_path / "t.db"),
        timeout=0.2,
        pragmas=("PRAGMA journal_mode = WAL",),
        writes=True,
    )
    await thread.start()
    await thread.call(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    yield thread
    await thread.close()


def rows(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(k for (k,) in conn.execute("SELECT k FROM t"))


def insert(key: str):
    return lambda c: c.execute("INSERT INTO t (k) VALUES (?) RETURNING k", (key,)).fetchone()[0]


async def hold_thread(
    writer: SqliteThread, statements: list[str]
) -> tuple[asyncio.Future, threading.Event]:
    """Occupy the thread until the returned event is set, tracing statements meanwhile, so
    the calls made in between queue up together."""
    gate = threading.Event()

    def busy(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(statements.append)
        gate.wait(5)

    return asyncio.ensure_future(writer.call(busy)), gate


async def test_writes_queued_together_share_one_commit_and_get_their_own_results(writer, tmp_path):
    statements: list[str] = []
    busy, gate = await hold_thread(writer, statements)
    await asyncio.sleep(0.05)
    calls = [asyncio.ensure_future(writer.call(insert(f"k{i}"))) for i in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*calls)
    await busy
    assert results == [f"k{i}" for i in range(20)]
    assert rows(tmp_path / "t.db") == sorted(f"k{i}" for i in range(20))
    # the trace starts inside the busy call's own transaction: its COMMIT comes first
    assert statements[0] == "COMMIT"
    assert statements[1:].count("BEGIN IMMEDIATE") == 1, statements
    assert statements[1:].count("COMMIT") == 1, statements
    assert "ROLLBACK" not in statements


async def test_a_failing_write_is_rolled_back_alone(writer, tmp_path):
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES ('partial')")
        raise ValueError("refused after a partial write")

    busy, gate = await hold_thread(writer, [])
    await asyncio.sleep(0.05)
    before = asyncio.ensure_future(writer.call(insert("before")))
    failing = asyncio.ensure_future(writer.call(half_then_fail))
    duplicate = asyncio.ensure_future(writer.call(insert("before")))
    after = asyncio.ensure_future(writer.call(insert("after")))
    await asyncio.sleep(0.05)
    gate.set()
    await busy
    assert await before == "before"
    with pytest.raises(ValueError, match="partial write"):
        await failing
    with pytest.raises(sqlite3.IntegrityError):
        await duplicate
    assert await after == "after"
    assert rows(tmp_path / "t.db") == ["after", "before"]


async def test_a_lock_held_elsewhere_fails_every_queued_write_and_the_thread_goes_on(
    writer, tmp_path
):
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        results = await asyncio.gather(
            writer.call(insert("a")), writer.call(insert("b")), return_exceptions=True
        )
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        assert "locked" in str(results[0])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await writer.call(insert("c")) == "c"
    assert rows(tmp_path / "t.db") == ["c"]


async def test_a_session_commits_on_exit_and_rolls_back_on_error(writer, tmp_path):
    async with writer.session() as session:
        await session.run("INSERT INTO t (k) VALUES (?)", ["s1"])
        await session.run_many("INSERT INTO t (k) VALUES (?)", [["s2"], ["s3"]])
        assert await session.run("SELECT count(*) FROM t", []) == [(3,)]
    with pytest.raises(RuntimeError):
        async with writer.session() as session:
            await session.run("INSERT INTO t (k) VALUES (?)", ["gone"])
            raise RuntimeError("migration failed")
    assert rows(tmp_path / "t.db") == ["s1", "s2", "s3"]
    assert await writer.call(insert("later")) == "later"


async def test_an_unopenable_file_raises_at_start(tmp_path):
    (tmp_path / "dir.db").mkdir()
    thread = SqliteThread(
        str(tmp_path / "dir.db"), timeout=0.1, pragmas=("PRAGMA journal_mode = WAL",), writes=True
    )
    with pytest.raises(sqlite3.Error):
        await thread.start()
    await asyncio.wait_for(thread.close(), 5)  # nothing left to stop, and no hang
    with pytest.raises(AssertionError, match="not open"):
        await thread.call(lambda conn: None)
