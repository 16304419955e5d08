"""Settings: the seed's variable names, `.env` files, and errors that name the variable."""

import pytest
from comfyui_server.core.config import get_settings
from comfyui_server.core.errors import ConfigError


def test_seed_names_and_lists():
    s = get_settings(
        {
            "COMFYUI_ENDPOINTS": "localhost:8188, localhost:8189",
            "SERVICE_PORT": "9000",
            "ROUTE_PREFIX": "/api/v2",
            "DEFAULT_FAILED_IMAGE_PATH": "/tmp/failed",
        }
    )
    assert s.comfyui_endpoints == ("localhost:8188", "localhost:8189")
    assert s.service_port == 9000
    assert s.route_prefix == "/api/v2"
    assert str(s.failed_path) == "/tmp/failed"


def test_defaults_are_the_embedded_ones():
    s = get_settings({})
    assert s.route_prefix == "/api/v1"
    assert s.service_port == 8000
    assert s.failed_path.as_posix() == "data/failed_images"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SERVICE_PORT": "eighty"}, "SERVICE_PORT"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"MAX_IN_FLIGHT_PER_ENDPOINT": "-1"}, "MAX_IN_FLIGHT_PER_ENDPOINT"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        get_settings(env)


def test_env_file_in_the_seed_format(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text(
        'COMFYUI_ENDPOINTS = "localhost:8188,localhost:8189"   # comfyui endpoints\n'
        'SERVICE_PORT = "8001"                                  # service port\n'
    )
    monkeypatch.delenv("SERVICE_PORT", raising=False)
    monkeypatch.delenv("COMFYUI_ENDPOINTS", raising=False)
    s = get_settings(env_file=str(env_file))
    assert s.comfyui_endpoints == ("localhost:8188", "localhost:8189")
    assert s.service_port == 8001


def test_process_environment_wins_over_env_file(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("SERVICE_PORT=8001\n")
    monkeypatch.setenv("SERVICE_PORT", "8002")
    assert get_settings(env_file=str(env_file)).service_port == 8002
