"""Several server processes on one database, and processes that die: tasks run once each,
and none is lost."""

import signal
from collections import Counter

import httpx
import pytest
from comfyui_server.core.testing.receiver import WebhookReceiver
from comfyui_server.core.testing.server import ServerProcess
from fixtures_app import wait_final, wait_until


def settings(emulators, db_url, tmp_path, name, **extra):
    return {
        "COMFYUI_ENDPOINTS": ",".join(e.address for e in emulators),
        "DATABASE_URL": db_url,
        "DATA_DIR": str(tmp_path / name),
        "COMFYUI_CLEANUP": "off",
        "URL_ALLOWLIST": "127.0.0.1",
        "REPLICA_TIMEOUT": "2",
        **extra,
    }


def submit(api, i, **extra):
    response = httpx.post(api, json={"service_type": "blank", "params": {"color": i}, **extra})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def executions(emulators) -> Counter:
    """How many times each prompt ran to the end, over every emulator."""
    runs = Counter()
    for emulator in emulators:
        for prompt_id, entry in emulator.history.items():
            if entry["status"]["status_str"] == "success":
                runs[prompt_id] += 1
    return runs


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_replicas_share_100_tasks_and_run_each_once(
    backend, make_db_url, comfyui_emulator_factory, tmp_path
):
    # long enough that the first replica still has work in flight when the second starts
    emulators = [comfyui_emulator_factory(node_time=0.05) for _ in range(2)]
    db_url = make_db_url(backend)
    with ServerProcess(settings(emulators, db_url, tmp_path, "a")) as one:
        ids = [submit(one.api, i) for i in range(50)]
        # the second replica starts while the first has work in flight: it must not take it
        with ServerProcess(settings(emulators, db_url, tmp_path, "b")) as two:
            ids += [submit(two.api, 50 + i) for i in range(50)]
            records = [wait_final(two.api, i, timeout=90) for i in ids]
    assert {r["status"] for r in records} == {"completed"}
    runs = executions(emulators)
    assert sum(runs.values()) == 100, "a task ran twice, or one never ran"
    assert all(runs[r["comfyui_task_id"]] == 1 for r in records)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_mid_run_then_restart_finishes_everything_once(
    backend, make_db_url, comfyui_emulator_factory, tmp_path
):
    # long enough that 100 sequential submissions finish well before the prompts do
    emulators = [comfyui_emulator_factory(node_time=0.05) for _ in range(2)]
    env = settings(
        emulators,
        make_db_url(backend),
        tmp_path,
        "one",
        MAX_IN_FLIGHT_PER_ENDPOINT="3",
        WEBHOOK_BACKOFF_BASE="0.1",
    )
    with WebhookReceiver() as receiver:
        server = ServerProcess(env).start()
        ids = [submit(server.api, i, client_callback_url=receiver.url) for i in range(100)]
        wait_until(lambda: 10 <= sum(len(e.history) for e in emulators))
        server.signal(signal.SIGKILL)
        server.wait(10)
        assert sum(len(e.history) for e in emulators) < 100, "the kill came too late"
        with ServerProcess(env, port=server.port) as again:
            records = [wait_final(again.api, i, timeout=90) for i in ids]
            receiver.wait_for(100, timeout=60)
    assert {r["status"] for r in records} == {"completed"}
    runs = executions(emulators)
    assert sum(runs.values()) == 100, "a finished prompt ran again, or a task never ran"
    delivered = Counter(d.json()["id"] for d in receiver.deliveries)
    assert set(delivered) == set(ids)


def test_a_dead_replicas_tasks_are_adopted_by_a_live_one(
    make_db_url, comfyui_emulator_factory, tmp_path
):
    emulators = [comfyui_emulator_factory(node_time=0.1)]
    db_url = make_db_url("postgres")
    survivor = ServerProcess(settings(emulators, db_url, tmp_path, "survivor")).start()
    doomed = ServerProcess(settings(emulators, db_url, tmp_path, "doomed")).start()
    try:
        ids = [submit(doomed.api, i) for i in range(10)]
        wait_until(
            lambda: any(
                httpx.get(f"{doomed.api}/tasks/{i}").json()["status"] == "running" for i in ids
            )
        )
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        records = [wait_final(survivor.api, i, timeout=60) for i in ids]
    finally:
        survivor.stop()
    assert {r["status"] for r in records} == {"completed"}
    assert sum(executions(emulators).values()) == 10


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_cancel_sent_to_another_replica_stops_the_prompt_on_comfyui(
    backend, make_db_url, comfyui_emulator, server_factory
):
    """The replica that answers the DELETE does not run the task: it interrupts the prompt on
    ComfyUI itself, and the running replica's late outcome does not overwrite the cancel."""
    comfyui_emulator.hang()
    env = {"DATABASE_URL": make_db_url(backend)}
    runner = server_factory([comfyui_emulator], env=env)
    task_id = submit(runner.api, 1)
    wait_until(lambda: httpx.get(f"{runner.api}/tasks/{task_id}").json()["status"] == "running")
    other = server_factory([comfyui_emulator], env=env)  # started later: it claims nothing
    prompt_id = httpx.get(f"{other.api}/tasks/{task_id}").json()["comfyui_task_id"]
    record = httpx.delete(f"{other.api}/tasks/{task_id}").json()
    assert record["status"] == "cancelled" and record["error_code"] == 9
    wait_until(lambda: prompt_id in comfyui_emulator.history)
    messages = comfyui_emulator.history[prompt_id]["status"]["messages"]
    assert messages[-1][0] == "execution_interrupted"
    # the running replica saw the interruption end its attempt; the cancel stands
    wait_until(lambda: not comfyui_emulator.queue_running)
    for api in (runner.api, other.api):
        assert httpx.get(f"{api}/tasks/{task_id}").json()["status"] == "cancelled"


class Unreachable:
    """An endpoint where nothing listens."""

    address = "127.0.0.1:9"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_task_cancelled_elsewhere_before_its_prompt_started_is_stopped_when_it_starts(
    backend, make_db_url, comfyui_emulator_factory, server_factory
):
    """The cancelling replica cannot reach that ComfyUI, so it only records the cancel; the
    running replica's `running` step is then refused, and it interrupts its own prompt."""
    emulator = comfyui_emulator_factory(node_time=1.0)
    emulator.hang()
    env = {"DATABASE_URL": make_db_url(backend), "MAX_IN_FLIGHT_PER_ENDPOINT": "2"}
    runner = server_factory([emulator], env=env)
    submit(runner.api, 1)
    second = submit(runner.api, 2)
    wait_until(lambda: len(emulator.queue_pending) == 1)
    prompt_id = httpx.get(f"{runner.api}/tasks/{second}").json()["comfyui_task_id"]
    other = server_factory([Unreachable()], env=env, wait_up=False)
    assert httpx.delete(f"{other.api}/tasks/{second}").json()["status"] == "cancelled"
    emulator.hang(False)  # the first prompt goes on; the second starts after it
    wait_until(lambda: prompt_id in emulator.history, timeout=20)
    assert emulator.history[prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"
    assert httpx.get(f"{runner.api}/tasks/{second}").json()["status"] == "cancelled"
