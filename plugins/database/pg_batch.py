"""Group commit for PostgreSQL: writes of the same statement that are waiting at the same
time go to the server together, in one round trip and one transaction.

Each task writes the same few statements (its saves, the end's announcement, the webhook's
delivery row), and under load many tasks write them at once. One at a time, each was a
round trip and a commit of its own: measured on the 2-core bench machine, 56-110 us of the
event loop's CPU and a WAL flush per statement. asyncpg's `fetchmany` sends a statement
with many argument lists in one go (one Sync, so one transaction): 3 us of CPU per
statement in batches of 30.

A batch is all or nothing (asyncpg rolls it back on a client or server error), so one
write that fails (a duplicate client_task_id, say) fails its batch; then each write of that
batch runs again alone, and only the failing one fails. A lost connection is different:
the batch may have committed, so its error reaches every caller of the batch, as it would
have reached each one's own statement, and nothing is run again. Nothing waits on purpose
to fill a batch: while a batch of a statement runs, the next one gathers what arrives
meanwhile.

Rows are handed back to their callers in one of two ways, fixed per statement:
- keyed: the statement's first argument names the one row it may touch, and each row it
  returns starts with that value (`UPDATE ... WHERE id = $1 RETURNING id`). A batch holds
  each key once, in ascending order, so two batches lock rows in the same order and never
  deadlock each other; a second write for a key waits for the next batch, after the first.
- one row each: every execution returns exactly one row (`INSERT ... RETURNING id`), in
  order.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

MAX_BATCH = 200
"""Writes per round trip, at most (a bound on the transaction's size and lock count)."""

_ONE_ROW_EACH = object()
"""The key of a job whose statement returns exactly one row per execution."""


class _Job:
    __slots__ = ("args", "future", "key")

    def __init__(self, args: Sequence[Any], key: Any, future: asyncio.Future) -> None:
        self.args = args
        self.key = key
        self.future = future


class StatementBatcher:
    """Runs writes on connections of `pool()`, batching those of the same SQL text."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool
        self._pending: dict[str, collections.deque[_Job]] = {}
        self._drains: dict[str, asyncio.Task] = {}

    async def row(self, sql: str, args: Sequence[Any], key: Any) -> asyncpg.Record | None:
        """The row this write returned (None: it matched nothing). `key` is `args[0]`."""
        return await self._submit(sql, args, key)

    async def one_row(self, sql: str, args: Sequence[Any]) -> asyncpg.Record:
        """The one row this write returns."""
        return await self._submit(sql, args, _ONE_ROW_EACH)

    async def close(self) -> None:
        """Wait for the batches under way (their callers are waiting for them)."""
        while self._drains:
            await asyncio.gather(*self._drains.values(), return_exceptions=True)

    def _submit(self, sql: str, args: Sequence[Any], key: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(sql, collections.deque()).append(_Job(args, key, future))
        if sql not in self._drains:
            self._drains[sql] = asyncio.create_task(self._drain(sql))
        return future

    async def _drain(self, sql: str) -> None:
        pending = self._pending[sql]
        batch: list[_Job] = []
        try:
            while pending:
                batch = _take(pending)
                await self._run(sql, batch)
                batch = []
        except BaseException as exc:  # cancelled, or a bug: nobody may wait forever
            error = exc if isinstance(exc, Exception) else RuntimeError("the write was cancelled")
            for job in (*batch, *pending):
                _settle(job, error=error)
            pending.clear()
            raise
        finally:
            # in the same step as the last look at `pending`: a write queued after it
            # finds no drain and starts one (a done-callback would run a step too late)
            del self._drains[sql]

    async def _run(self, sql: str, batch: list[_Job]) -> None:
        try:
            async with self._pool().acquire() as conn:
                if len(batch) == 1:
                    rows = await conn.fetch(sql, *batch[0].args)
                else:
                    rows = await conn.fetchmany(sql, [job.args for job in batch])
        except asyncpg.PostgresConnectionError as exc:
            _fail(batch, exc)  # lost on the way: the batch may have committed
            return
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            # the server refused one of them and rolled the batch back: find out which
            for job in batch:
                await self._run(sql, [job])
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        _hand_out(batch, rows)


def _take(pending: collections.deque[_Job]) -> list[_Job]:
    """The next batch: the oldest write of each key (in ascending key order), up to
    MAX_BATCH; later writes of a key already taken stay queued, in their order."""
    batch: list[_Job] = []
    left: list[_Job] = []
    keys: set[Any] = set()
    while pending and len(batch) < MAX_BATCH:
        job = pending.popleft()
        if job.key is _ONE_ROW_EACH:
            batch.append(job)
        elif job.key in keys:
            left.append(job)
        else:
            keys.add(job.key)
            batch.append(job)
    pending.extendleft(reversed(left))
    if keys:
        batch.sort(key=lambda job: job.key)
    return batch


def _hand_out(batch: list[_Job], rows: list[asyncpg.Record]) -> None:
    if batch[0].key is _ONE_ROW_EACH:
        if len(rows) != len(batch):
            error = RuntimeError(f"{len(batch)} writes returned {len(rows)} rows, not one each")
            for job in batch:
                _settle(job, error=error)
            return
        for job, row in zip(batch, rows, strict=True):
            _settle(job, row)
        return
    by_key = {row[0]: row for row in rows}
    for job in batch:
        _settle(job, by_key.get(job.key))


def _fail(batch: list[_Job], error: BaseException) -> None:
    """Each caller hears of the error, as it would have of its own statement's; nothing runs
    again, since a write that may have been committed must not be repeated."""
    for job in batch:
        _settle(job, error=error)


def _settle(job: _Job, row: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():  # the caller was cancelled; the write itself was done
        return
    if error is None:
        job.future.set_result(row)
    else:
        job.future.set_exception(error)
