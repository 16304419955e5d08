"""The log writer thread: lines keep their order and their values at the time of the call,
carry the task id of the caller's context, and are all written by `close()`."""

import io
import logging
import threading

import pytest
from comfyui_server.core.logs import LogWriter, TaskIdFilter, current_task_id


class Recording(logging.StreamHandler):
    """Writes as a StreamHandler does, and notes which thread wrote each line."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.writers: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.writers.append(threading.current_thread().name)
        super().emit(record)


@pytest.fixture
def captured():
    """A LogWriter on the root logger writing to a buffer; the root restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    direct = Recording(buffer)
    direct.addFilter(TaskIdFilter())
    direct.setFormatter(logging.Formatter("%(task_id)s|%(message)s"))
    writer = LogWriter(direct)
    root.handlers[:] = [writer.handler]
    root.setLevel(logging.INFO)
    yield writer, buffer
    writer.close()
    root.handlers[:], root.level = saved_handlers, saved_level


def test_lines_are_written_by_another_thread_in_order(captured):
    writer, buffer = captured
    log = logging.getLogger("comfyui_server.test")
    for i in range(200):
        log.info("line %s", i)
    writer.close()
    lines = buffer.getvalue().splitlines()
    assert [line.rsplit("|", 1)[1] for line in lines] == [f"line {i}" for i in range(200)]
    assert threading.current_thread().name not in writer.direct.writers


def test_a_line_keeps_the_values_it_was_logged_with(captured):
    writer, buffer = captured
    seen = ["before"]
    logging.getLogger("comfyui_server.test").info("state %s", seen)
    seen[0] = "after"  # changed before the writer thread may have formatted the line
    writer.close()
    assert "state ['before']" in buffer.getvalue()


def test_the_task_id_is_the_callers(captured):
    writer, buffer = captured
    token = current_task_id.set(42)
    try:
        logging.getLogger("comfyui_server.test").info("working")
    finally:
        current_task_id.reset(token)
    logging.getLogger("comfyui_server.test").info("idle")
    writer.close()
    assert buffer.getvalue().splitlines() == ["42|working", "None|idle"]


def test_after_close_lines_are_written_at_once(captured):
    writer, buffer = captured
    writer.close()
    logging.getLogger("comfyui_server.test").info("late")
    assert buffer.getvalue().splitlines() == ["None|late"]
    assert writer.direct.writers == [threading.current_thread().name]
