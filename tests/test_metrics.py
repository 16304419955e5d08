"""/metrics parses as Prometheus text and its counters move with the tasks run."""

import httpx
from fixtures_app import wait_until
from prometheus_client.parser import text_string_to_metric_families


def scrape(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(server.url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def completed(samples, workflow="blank", status="completed", code="0"):
    key = (
        "comfyui_server_tasks_total",
        tuple(sorted({"workflow": workflow, "status": status, "error_code": code}.items())),
    )
    return samples.get(key, 0.0)


def test_metrics_count_tasks_and_show_endpoints(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    before = scrape(server)
    for i in range(3):
        httpx.post(
            server.api, params={"wait": 10}, json={"service_type": "blank", "params": {"color": i}}
        )
    comfyui_emulator.fail_next()
    httpx.post(
        server.api, params={"wait": 10}, json={"service_type": "blank", "params": {"color": 9}}
    )
    after = scrape(server)
    assert completed(after) - completed(before) == 3
    assert (
        completed(after, status="failed", code="4") - completed(before, status="failed", code="4")
        == 1
    )
    endpoint = (("endpoint", comfyui_emulator.address),)
    assert after[("comfyui_server_endpoint_up", endpoint)] == 1
    assert after[("comfyui_server_endpoint_in_flight", endpoint)] == 0
    assert after[("comfyui_server_queue_depth", ())] == 0
    stage = (
        "comfyui_server_task_stage_seconds_count",
        (("stage", "execution"), ("workflow", "blank")),
    )
    assert after[stage] - before.get(stage, 0) == 3


def test_an_endpoint_removed_at_run_time_leaves_no_series(comfyui_emulator_factory, server_factory):
    a, b = comfyui_emulator_factory(), comfyui_emulator_factory()
    server = server_factory([a, b])
    httpx.post(server.api, params={"wait": 10}, json={"service_type": "blank", "params": {}})
    names = {
        name: {dict(labels).get("endpoint") for (n, labels) in scrape(server) if n == name}
        for name in ("comfyui_server_endpoint_up", "comfyui_server_endpoint_in_flight")
    }
    assert all(found == {a.address, b.address} for found in names.values()), names
    samples = scrape(server)
    measured = {dict(labels)["endpoint"] for (n, labels) in samples if n.endswith("per_task")}
    assert measured and measured <= {a.address, b.address}  # the endpoint that ran it
    assert httpx.delete(f"{server.api}/endpoints/{b.address}").status_code == 202
    wait_until(lambda: len(httpx.get(server.api + "/endpoints").json()) == 1)
    left = {dict(labels).get("endpoint") for (n, labels) in scrape(server) if "endpoint_" in n}
    assert left == {a.address}
