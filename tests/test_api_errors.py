"""Bad input gets a 4xx JSON error naming the field, and records no task."""

import base64

import httpx
import pytest

GOOD = {"service_type": "blank", "params": {}}
NOT_AN_IMAGE = base64.b64encode(b"just some text, not a picture").decode()


@pytest.fixture
def server(comfyui_emulator, server_factory):
    return server_factory([comfyui_emulator])


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"params": {}}, 400, "service_type"),
        ({"service_type": 5, "params": {}}, 400, "service_type"),
        ({"service_type": "blank", "params": []}, 400, "params"),
        ({"service_type": "blank", "params": {}, "surprise": 1}, 400, "surprise"),
        ({"service_type": "nope", "params": {}}, 422, "service_type"),
        ({"service_type": "blank", "params": {"width": "wide"}}, 422, "params.width"),
        ({"service_type": "blank", "params": {"width": 0}}, 422, "params.width"),
        ({"service_type": "blank", "params": {"depth": 3}}, 400, "params.depth"),
        ({"service_type": "invert", "params": {}}, 400, "params.image"),
        ({"service_type": "invert", "params": {"image": "***"}}, 422, "params.image"),
        ({"service_type": "invert", "params": {"image": NOT_AN_IMAGE}}, 422, "params.image"),
        ({**GOOD, "client_callback_url": "ftp://x/y"}, 422, "client_callback_url"),
        ({**GOOD, "client_callback_url": "http://169.254.169.254/x"}, 422, "client_callback_url"),
        ({**GOOD, "client_task_id": ""}, 400, "client_task_id"),
    ],
)
def test_bad_body_names_the_field_and_records_nothing(server, body, status, field):
    marker = body.get("client_task_id") or f"bad-{field}-{status}"
    if "client_task_id" not in body:
        body = {**body, "client_task_id": marker}
    response = httpx.post(server.api, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status_code"] == status
    assert field in [item["key"] for item in error["extra"]], error
    assert field in error["detail"] or any(field in item["message"] for item in error["extra"])
    if marker:
        assert httpx.get(server.api + "/tasks", params={"client_task_id": marker}).json() == []


def test_non_json_body_is_a_400_naming_the_body(server):
    response = httpx.post(
        server.api, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    (item,) = response.json()["extra"]
    assert item["key"] == "body"
    assert item["message"].startswith("the request body is not valid JSON")


def test_truncated_json_body_is_named_too(server):
    response = httpx.post(
        server.api, content=b'{"service_type": "bl', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["extra"][0]["key"] == "body"


def test_unknown_task_is_a_404_naming_it(server):
    response = httpx.get(server.api + "/tasks/999999")
    assert response.status_code == 404
    assert response.json()["extra"][0]["key"] == "task_id"
