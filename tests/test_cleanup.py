"""After a task, ComfyUI keeps none of its files and none of its history: at once when it
can, later when it cannot (retries, and after a crash, from the chore in the task store)."""

import base64
import datetime as dt
import io
import logging
import signal
import time
from pathlib import Path

import httpx
import pytest
from comfyui_server.core import MemoryTaskStore, hookimpl
from comfyui_server.core.models import TaskResult
from comfyui_server.core.testing.server import ServerProcess
from comfyui_server.plugins import cleanup
from fixtures_app import wait_final, wait_until
from PIL import Image

CLEANER = cleanup.CLEANER_NODE
FAST_RETRIES = {
    "COMFYUI_CLEANUP_BACKOFF_BASE": "0.2",
    "COMFYUI_CLEANUP_BACKOFF_MAX": "0.4",
    "COMFYUI_CLEANUP_POLL_INTERVAL": "0.2",
    "COMFYUI_CLEANUP_TIMEOUT": "1",
}


def png(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_inputs_outputs_and_history_are_removed(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"COMFYUI_CLEANUP": "filecleaner"})
    ids = [
        httpx.post(
            server.api,
            json={
                "service_type": "invert",
                "params": {"image": png((i, 2 * i, 3)), "width": 8, "height": 8},
            },
        ).json()["id"]
        for i in range(20)
    ]
    records = [wait_final(server.api, i) for i in ids]
    assert {r["status"] for r in records} == {"completed"}, [r["error"] for r in records]
    # every task really used an uploaded input and wrote an output
    assert len(comfyui_emulator.prompts_received) >= 40

    def disks_clean():
        inputs = [p for p in comfyui_emulator.input_dir.rglob("*") if p.is_file()]
        outputs = [p for p in comfyui_emulator.output_dir.rglob("*") if p.is_file()]
        return not inputs and not outputs and not comfyui_emulator.history

    wait_until(disks_clean, timeout=30)
    # the outputs are still ours, in storage
    for record in records:
        assert httpx.get(record["outputs"][0]["url"]).status_code == 200


def test_off_leaves_comfyui_alone(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"COMFYUI_CLEANUP": "off"})
    task = httpx.post(server.api, json={"service_type": "blank", "params": {}}).json()
    record = wait_final(server.api, task["id"])
    assert (comfyui_emulator.output_dir / record["comfyui_filepath"]).is_file()
    assert record["comfyui_task_id"] in comfyui_emulator.history


def test_an_endpoint_without_the_cleaner_node_keeps_its_files(
    comfyui_emulator_factory, server_factory
):
    emulator = comfyui_emulator_factory(object_info_exclude=["Clean input and output file"])
    server = server_factory([emulator], env={"COMFYUI_CLEANUP": "filecleaner"})
    task = httpx.post(server.api, json={"service_type": "blank", "params": {}}).json()
    record = wait_final(server.api, task["id"])
    wait_until(lambda: record["comfyui_task_id"] not in emulator.history)  # history still goes
    assert (emulator.output_dir / record["comfyui_filepath"]).is_file()


def files_of(emulator) -> list[Path]:
    return [
        p
        for folder in (emulator.input_dir, emulator.output_dir)
        for p in folder.rglob("*")
        if p.is_file()
    ]


def disks_and_history_clean(emulator) -> bool:
    return not files_of(emulator) and not emulator.history


def cleaner_prompts(emulator) -> list[dict]:
    return [
        body
        for body in emulator.prompts_received
        if any(n.get("class_type") == CLEANER for n in body["prompt"].values())
    ]


def finished_chores(server, task_id: int) -> list:
    """The task's chores once all are finished (the last write follows the cleaning)."""
    store = server.app.state.engine.store

    def finished() -> list | None:
        chores = server.call(store.task_chores(task_id))
        return chores if chores and all(c.finished_at for c in chores) else None

    return wait_until(finished, timeout=10, interval=0.05)


def submit_invert(api: str, shade: int) -> int:
    """A task that uploads an input and writes an output: two files to clean."""
    body = {"service_type": "invert", "params": {"image": png((shade, 9, 3)), "width": 8}}
    return httpx.post(api, json=body).json()["id"]


def test_a_failed_cleanup_is_retried_and_its_chore_finished(comfyui_emulator, server_factory):
    comfyui_emulator.fail_next(1, "disk busy", "OSError", class_type=CLEANER)
    server = server_factory(
        [comfyui_emulator], env={"COMFYUI_CLEANUP": "filecleaner", **FAST_RETRIES}
    )
    task_id = submit_invert(server.api, 1)
    record = wait_final(server.api, task_id)
    assert record["status"] == "completed", record["error"]
    wait_until(lambda: disks_and_history_clean(comfyui_emulator), timeout=15)
    # the first clean-up prompt failed (the injected error), the second one did the work;
    # both history entries are gone with the task's
    attempts = cleaner_prompts(comfyui_emulator)
    assert len(attempts) == 2
    assert attempts[0]["prompt"] == attempts[1]["prompt"]
    (chore,) = finished_chores(server, task_id)
    assert chore.kind == "cleanup" and chore.attempts == 2 and chore.last_error is None
    assert chore.data["endpoint"] == comfyui_emulator.address
    assert len(chore.data["files"]) == 2


def test_a_cleanup_prompt_slower_than_the_timeout_is_waited_for_not_sent_again(
    comfyui_emulator_factory, server_factory
):
    # busy ComfyUI: the clean-up prompt takes longer than an attempt may wait
    emulator = comfyui_emulator_factory(node_times={CLEANER: 1.2})
    env = {"COMFYUI_CLEANUP": "filecleaner", **FAST_RETRIES, "COMFYUI_CLEANUP_TIMEOUT": "0.4"}
    server = server_factory([emulator], env=env)
    task_id = submit_invert(server.api, 5)
    wait_final(server.api, task_id)
    wait_until(lambda: disks_and_history_clean(emulator), timeout=15)
    assert len(cleaner_prompts(emulator)) == 1
    (chore,) = finished_chores(server, task_id)
    assert chore.attempts >= 2
    assert chore.data["waiting"] is not None  # what the timed-out attempt left to wait for


def test_a_cleanup_is_given_up_when_its_retry_window_ends(comfyui_emulator, server_factory, caplog):
    caplog.set_level(logging.WARNING, logger="comfyui_server.plugins.cleanup")
    comfyui_emulator.fail_next(1000, "disk busy", "OSError", class_type=CLEANER)
    env = {
        "COMFYUI_CLEANUP": "filecleaner",
        **FAST_RETRIES,
        "COMFYUI_CLEANUP_RETRY_WINDOW": "1",
    }
    server = server_factory([comfyui_emulator], env=env)
    task_id = submit_invert(server.api, 7)
    wait_final(server.api, task_id)
    (chore,) = finished_chores(server, task_id)
    assert chore.last_error.startswith("gave up: cleanup prompt cleanup-")
    assert "OSError: disk busy" in chore.last_error
    assert chore.attempts >= 2  # retried within the window first
    assert chore.finished_at - chore.created_at < dt.timedelta(seconds=1.5)
    assert len(files_of(comfyui_emulator)) == 2  # they stay, and a warning says so
    assert f"task {task_id}: cleanup on {comfyui_emulator.address} given up" in caplog.text
    sent = len(cleaner_prompts(comfyui_emulator))
    time.sleep(1)
    assert len(cleaner_prompts(comfyui_emulator)) == sent  # no more attempts


def test_a_replayed_end_adds_no_second_cleanup(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator], env={"COMFYUI_CLEANUP": "filecleaner"})
    task_id = submit_invert(server.api, 2)
    wait_final(server.api, task_id)
    wait_until(lambda: disks_and_history_clean(comfyui_emulator))
    (done,) = finished_chores(server, task_id)
    sent = len(cleaner_prompts(comfyui_emulator))
    store = server.app.state.engine.store

    async def announce_again() -> list:
        task = await store.get(task_id)
        again = TaskResult(status="completed", outputs=task.outputs, replayed=True)
        await cleanup.on_result(task=task, result=again)  # the hook, on the server's loop
        return await store.task_chores(task_id)

    assert server.call(announce_again()) == [done]
    assert len(cleaner_prompts(comfyui_emulator)) == sent


class StoreWithoutChores(MemoryTaskStore):
    """A third-party task store written before chores existed."""

    add_chore = task_chores = claim_chores = finish_chore = retry_chore = release_chores = None


class OldStorePlugin:
    @hookimpl
    def task_store(self, settings):
        return StoreWithoutChores()


def test_a_store_without_chores_still_gets_cleanups_in_memory(
    comfyui_emulator, server_factory, caplog
):
    caplog.set_level(logging.WARNING, logger="comfyui_server.plugins.cleanup")
    server = server_factory(
        [comfyui_emulator],
        env={"COMFYUI_CLEANUP": "filecleaner", "DISABLED_PLUGINS": "database"},
        extra_plugins=[("old_store", OldStorePlugin())],
    )
    assert isinstance(server.app.state.engine.store, StoreWithoutChores)
    assert "keeps no chores" in caplog.text
    wait_final(server.api, submit_invert(server.api, 6))
    wait_until(lambda: disks_and_history_clean(comfyui_emulator))


def test_a_cleanup_cut_short_by_a_crash_is_done_after_the_restart(
    comfyui_emulator, db_url, tmp_path
):
    """Every clean-up prompt fails while the first server runs; it is SIGKILLed; the second
    one, on the same database, finds the chore and cleans disks and history."""
    emulator = comfyui_emulator
    emulator.fail_next(10**6, "disk busy", "OSError", class_type=CLEANER)
    env = {
        "COMFYUI_ENDPOINTS": emulator.address,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": db_url,
        "URL_ALLOWLIST": "127.0.0.1",
        "COMFYUI_CLEANUP": "filecleaner",
        **FAST_RETRIES,
    }
    first = ServerProcess(env).start()
    try:
        task_id = submit_invert(first.api, 3)
        record = wait_final(first.api, task_id)
        assert record["status"] == "completed", record["error"]
        wait_until(lambda: len(cleaner_prompts(emulator)) >= 3)  # retried, failing
    finally:
        first.signal(signal.SIGKILL)
        first.wait()
    wait_until(lambda: not emulator.queue_pending and not emulator.queue_running)
    emulator.clear_failures()
    # nothing was cleaned: the files and the task's history are all still there
    assert len(files_of(emulator)) == 2
    assert record["comfyui_task_id"] in emulator.history
    failed = len(cleaner_prompts(emulator))
    with ServerProcess(env, port=first.port):
        wait_until(lambda: disks_and_history_clean(emulator), timeout=30)
    assert len(cleaner_prompts(emulator)) > failed  # the second server did it


def test_a_dead_holders_cleanup_is_taken_over_without_sending_it_twice(
    comfyui_emulator_factory, make_db_url, tmp_path
):
    """The server dies while its clean-up prompt runs on ComfyUI. Once the dead holder's
    lease has run out, the next server takes the chore, finds that prompt's outcome in
    ComfyUI's history (its id comes from the chore) and only deletes the history entries."""
    emulator = comfyui_emulator_factory(node_times={CLEANER: 1.5})
    env = {
        "COMFYUI_ENDPOINTS": emulator.address,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": make_db_url("sqlite"),
        "URL_ALLOWLIST": "127.0.0.1",
        "COMFYUI_CLEANUP": "filecleaner",
        **FAST_RETRIES,
        "COMFYUI_CLEANUP_TIMEOUT": "2",  # held for 2 + 5 s
    }
    first = ServerProcess(env).start()
    try:
        task_id = submit_invert(first.api, 4)
        wait_final(first.api, task_id)

        def cleaning() -> bool:
            return any(item[1].startswith("cleanup-") for item in emulator.queue_running)

        wait_until(cleaning, timeout=10, interval=0.005)
    finally:
        first.signal(signal.SIGKILL)
        first.wait()
    wait_until(lambda: not emulator.queue_running)
    assert not files_of(emulator)  # the prompt did its work after all...
    assert len(emulator.history) == 2  # ...but its history and the task's remain
    with ServerProcess(env, port=first.port):
        wait_until(lambda: not emulator.history, timeout=30)
    assert len(cleaner_prompts(emulator)) == 1  # found, not sent again


def test_local_cleanup_removes_files_from_mounted_folders(
    comfyui_emulator, server_factory, tmp_path
):
    # the emulator's folders "mounted" under a path naming its port: one folder per endpoint
    mounts = tmp_path / "mounts"
    mounts.mkdir()
    (mounts / f"comfyui-{comfyui_emulator.port}").symlink_to(comfyui_emulator.base_dir)
    env = {
        "COMFYUI_CLEANUP": "local",
        "COMFYUI_INPUT_DIR": str(mounts / "comfyui-{port}" / "input"),
        "COMFYUI_OUTPUT_DIR": str(mounts / "comfyui-{port}" / "output"),
    }
    server = server_factory([comfyui_emulator], env=env)
    ids = [submit_invert(server.api, shade) for shade in range(5)]
    records = [wait_final(server.api, i) for i in ids]
    assert {r["status"] for r in records} == {"completed"}, [r["error"] for r in records]
    wait_until(lambda: disks_and_history_clean(comfyui_emulator), timeout=15)
    assert cleaner_prompts(comfyui_emulator) == []  # removed here, not by a ComfyUI node
    assert len(comfyui_emulator.prompts_received) == 5
    for record in records:  # still ours, in storage
        assert httpx.get(record["outputs"][0]["url"]).status_code == 200


def test_local_cleanup_never_removes_anything_outside_its_folders(tmp_path):
    inputs, outputs, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (inputs, outputs / "sub", elsewhere):
        folder.mkdir(parents=True)
    secret = elsewhere / "secret.png"
    secret.write_bytes(b"keep")
    (inputs / "a.png").write_bytes(b"x")
    (outputs / "sub" / "b.png").write_bytes(b"x")
    (outputs / "link.png").symlink_to(secret)  # a link inside: the link goes, not its target
    (outputs / "escape").symlink_to(elsewhere)  # a directory leading out
    folders = {"input": inputs, "output": outputs}
    refused = cleanup.remove_local_files(
        folders,
        [
            ("input", "a.png"),
            ("output", "sub/b.png"),
            ("output", "link.png"),
            ("input", "gone-already.png"),
            ("input", "../elsewhere/secret.png"),
            ("output", "sub/../../elsewhere/secret.png"),
            ("output", str(secret)),
            ("output", "escape/secret.png"),
            ("output", "sub"),
            ("output", ".."),
            ("temp", "a.png"),
        ],
    )
    assert refused == [
        "input/../elsewhere/secret.png",
        "output/sub/../../elsewhere/secret.png",
        f"output/{secret}",
        "output/escape/secret.png",
        "output/sub",
        "output/..",
        "temp/a.png",
    ]
    assert secret.read_bytes() == b"keep"
    assert not (inputs / "a.png").exists() and not (outputs / "sub" / "b.png").exists()
    assert not (outputs / "link.png").is_symlink()
    assert (outputs / "sub").is_dir() and (outputs / "escape").is_symlink()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "COMFYUI_CLEANUP=local needs COMFYUI_INPUT_DIR and COMFYUI_OUTPUT_DIR"),
        (
            {"COMFYUI_INPUT_DIR": "/nonexistent/in", "COMFYUI_OUTPUT_DIR": "/nonexistent/out"},
            "COMFYUI_INPUT_DIR: /nonexistent/in",
        ),
    ],
)
def test_local_cleanup_without_its_folders_stops_start_up(
    comfyui_emulator, tmp_path, extra, message
):
    env = {
        "COMFYUI_ENDPOINTS": comfyui_emulator.address,
        "DATA_DIR": str(tmp_path / "data"),
        "COMFYUI_CLEANUP": "local",
        **extra,
    }
    with pytest.raises(RuntimeError, match="server exited") as exited:
        ServerProcess(env).start()
    assert message in str(exited.value)
