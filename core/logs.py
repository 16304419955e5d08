"""Logging: plain text for people, or one JSON object per line for log pipelines.

The task being worked on is kept in a context variable that the engine sets for each
attempt, so every line logged on its behalf (by core or by a plugin) carries `task_id`.

Lines are formatted and written by a thread of their own (`LogWriter`): the event loop only
hands a record over. A write to stderr can block (a full pipe to a slow log collector), and
it would block every task with it. Formatting and writing a line costs about 11 us of CPU
alone; in the throughput bench the loop's CPU per task (two lines) dropped by 0.1-0.3 ms
when INFO lines were off, more than that suggests (each write also hands the GIL over).
"""

from __future__ import annotations

import atexit
import contextvars
import datetime as dt
import logging
import logging.handlers
import queue
import sys

import msgspec

current_task_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "current_task_id", default=None
)


class TaskIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            record.task_id = current_task_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "task_id", None) is not None:
            line["task_id"] = record.task_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


class _HandOver(logging.handlers.QueueHandler):
    """Puts records on the writer's queue with their message merged now (the arguments
    may change once the call returns) and the task id read in the caller's context."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        return record


class LogWriter:
    """The thread that formats and writes log lines, and the handler that feeds it.

    `close()` writes out what is queued and goes back to writing in the caller's thread;
    call it before the process ends (uvicorn ends it by raising the signal it was stopped
    with, which skips `atexit`)."""

    def __init__(self, stream_handler: logging.Handler) -> None:
        self.direct = stream_handler
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.handler = _HandOver(records)
        self.handler.addFilter(TaskIdFilter())
        self._listener = logging.handlers.QueueListener(records, stream_handler)
        self._listener.start()
        self._open = True
        atexit.register(self.close)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        root = logging.getLogger()
        root.handlers[:] = [self.direct if h is self.handler else h for h in root.handlers]
        self._listener.stop()  # returns once every queued record is written


def configure(level: str, fmt: str) -> LogWriter:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskIdFilter())  # for records logged after close(), in the caller
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    writer = LogWriter(handler)
    root = logging.getLogger()
    root.handlers[:] = [writer.handler]
    root.setLevel(level.upper())
    # libraries that narrate every request at INFO
    for noisy in ("httpx", "httpcore", "websockets", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return writer
