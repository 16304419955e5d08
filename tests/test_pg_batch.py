"""PostgreSQL group commit (plugins/database/pg_batch.py), on the real server: writes of one
statement waiting together share a round trip and a commit, yet each caller gets its own
row or its own error, and two writes of one row keep their order."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from comfyui_server.plugins.database.pg_batch import StatementBatcher

INCREMENT = "UPDATE t SET n = n + 1 WHERE id = $1 RETURNING id, n"
INSERT = "INSERT INTO t (id, n) VALUES ($1, $2) RETURNING id, n"


@pytest.fixture
def url(make_db_url):
    return make_db_url("postgres")


@pytest.fixture
async def pool(url):
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    await pool.execute("CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL)")
    await pool.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    yield pool
    await pool.close()


async def transactions(pool: asyncpg.Pool, ids: range) -> int:
    """How many transactions wrote these rows (a row's xmin is the one that wrote it)."""
    return await pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM t WHERE id >= $1 AND id < $2", ids.start, ids.stop
    )


async def test_writes_waiting_together_share_one_transaction(pool):
    batcher = StatementBatcher(lambda: pool)
    ids = range(1, 61)
    found = await asyncio.gather(*(batcher.row(INCREMENT, (i,), key=i) for i in ids))
    assert [tuple(row) for row in found] == [(i, 1) for i in ids]
    # the first write goes alone; the 59 that queued meanwhile go in the next round trip
    assert await transactions(pool, ids) <= 3
    # written one at a time, each is a transaction of its own
    for i in ids:
        await batcher.row(INCREMENT, (i,), key=i)
    assert await transactions(pool, ids) == 60


async def test_a_write_that_matches_nothing_gets_none_beside_others(pool):
    batcher = StatementBatcher(lambda: pool)
    found = await asyncio.gather(*(batcher.row(INCREMENT, (i,), key=i) for i in (1, 999, 2)))
    assert [None if row is None else row["id"] for row in found] == [1, None, 2]


async def test_a_failing_write_fails_alone_and_the_others_are_kept(pool):
    batcher = StatementBatcher(lambda: pool)
    rows = [(200, 1), (201, 2), (5, 3), (202, 4)]  # id 5 exists: a duplicate key
    found = await asyncio.gather(
        *(batcher.one_row(INSERT, args) for args in rows), return_exceptions=True
    )
    assert isinstance(found[2], asyncpg.UniqueViolationError)
    assert [tuple(row) for row in (found[0], found[1], found[3])] == [(200, 1), (201, 2), (202, 4)]
    kept = await pool.fetch("SELECT id, n FROM t WHERE id >= 200 ORDER BY id")
    assert [tuple(row) for row in kept] == [(200, 1), (201, 2), (202, 4)]


async def test_writes_of_one_row_run_in_their_order(pool):
    batcher = StatementBatcher(lambda: pool)
    found = await asyncio.gather(*(batcher.row(INCREMENT, (7,), key=7) for _ in range(5)))
    assert [row["n"] for row in found] == [1, 2, 3, 4, 5]


async def test_each_caller_gets_its_own_row_back(pool):
    batcher = StatementBatcher(lambda: pool)
    found = await asyncio.gather(*(batcher.one_row(INSERT, (300 + i, i)) for i in range(40)))
    assert [tuple(row) for row in found] == [(300 + i, i) for i in range(40)]


async def test_a_cancelled_caller_does_not_stop_the_batch(pool):
    batcher = StatementBatcher(lambda: pool)
    first = asyncio.ensure_future(batcher.row(INCREMENT, (9,), key=9))
    second = asyncio.ensure_future(batcher.row(INCREMENT, (10,), key=10))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)["n"] == 1
    await batcher.close()
    assert await pool.fetchval("SELECT n FROM t WHERE id = 9") == 1  # its write was done


class CuttableLink:
    """A TCP relay to PostgreSQL whose connections can be cut: a lost network, as the
    client sees it, while the server goes on with what it has already received."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for transport in self.transports:
            transport.abort()

    async def close(self) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()


async def test_a_batch_cut_off_with_its_connection_is_not_run_again(url, pool):
    """The server has the whole batch when the link drops, so it may commit it: every
    caller gets the connection error, and no write is sent a second time."""
    parts = urlsplit(url)
    link = CuttableLink((parts.hostname, parts.port or 5432))
    port = await link.start()
    userinfo, at, _ = parts.netloc.rpartition("@")
    linked = urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))
    remote = await asyncpg.create_pool(linked, min_size=1, max_size=1)
    try:
        backend = await remote.fetchval("SELECT pg_backend_pid()")
        batcher = StatementBatcher(lambda: remote)
        holder = await pool.acquire()
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM t WHERE id = 50 FOR UPDATE")  # the batch waits
        try:
            writes = asyncio.gather(
                *(batcher.row(INCREMENT, (i,), key=i) for i in (50, 51, 52)),
                return_exceptions=True,
            )
            for _ in range(100):  # until the batch waits for the lock
                if await pool.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                    backend,
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the batch never reached the lock")
            link.cut()
        finally:
            await lock.rollback()
            await pool.release(holder)
        found = await asyncio.wait_for(writes, 10)
        assert all(isinstance(f, asyncpg.PostgresConnectionError) for f in found), found
    finally:
        await link.close()
        remote.terminate()
    for _ in range(100):  # the server ends the cut-off session once it has run the batch
        if not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend):
            break
        await asyncio.sleep(0.05)
    counts = await pool.fetch("SELECT n FROM t WHERE id IN (50, 51, 52) ORDER BY id")
    # it had the batch in full and committed it, as far as it could tell: once, not twice
    assert [row["n"] for row in counts] == [1, 1, 1]
