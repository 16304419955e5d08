"""Property-based fuzzing of every route in the OpenAPI schema: no 5xx, and every error in
the documented envelope {"status_code", "detail", "extra": [{"key", "message"}]}."""

import tempfile

import pytest
import schemathesis
from comfyui_server.core.testing.emulator_thread import EmulatorThread
from comfyui_server.core.testing.server import ServerThread
from hypothesis import HealthCheck, given, settings

# Routes whose nature is to wait or to reach out: they are covered by their own tests.
SKIPPED = ("/events", "/endpoints")


@pytest.fixture(scope="module")
def api_schema():
    with tempfile.TemporaryDirectory() as base, EmulatorThread(base_dir=f"{base}/comfy") as emu:
        env = {
            "COMFYUI_ENDPOINTS": emu.address,
            "DATA_DIR": f"{base}/data",
            "COMFYUI_CLEANUP": "off",
        }
        with ServerThread(env) as server:
            yield schemathesis.openapi.from_url(server.url + "/schema/openapi.json")


def operations(api_schema):
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not any(part in operation.path for part in SKIPPED):
            yield operation


def test_no_route_answers_5xx_and_errors_use_the_envelope(api_schema):
    checked = []
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def fuzz(case):
            check(case)

        fuzz()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 10, checked


def check(case):
    if case.query:
        case.query.pop("wait", None)  # waiting is tested elsewhere; here it would only slow
    response = case.call(timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        body = response.json()
        assert set(body) == {"status_code", "detail", "extra"}, body
        assert body["status_code"] == response.status_code
        assert all(set(item) == {"key", "message"} for item in body["extra"]), body
