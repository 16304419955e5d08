"""S3 down: outputs go to the fallback folder with code 2; S3 back and `tasks retry-storage`
run: objects present, records clean, folder empty. Twice is harmless."""

import subprocess
import sys
from pathlib import Path

import httpx
from fixtures_app import wait_final

BIN = Path(sys.executable).parent / "comfyui-server"


def test_retry_storage_after_an_outage(comfyui_emulator, server_factory, s3_server, tmp_path):
    failed = tmp_path / "failed"
    env = s3_server.env(DEFAULT_FAILED_IMAGE_PATH=str(failed))
    server = server_factory([comfyui_emulator], env=env)
    with s3_server.down():
        ids = [
            httpx.post(
                server.api, json={"service_type": "blank", "params": {"batch_size": 2, "color": i}}
            ).json()["id"]
            for i in range(2)
        ]
        records = [wait_final(server.api, i, timeout=60) for i in ids]
    assert {r["error_code"] for r in records} == {2}
    kept = sorted(p.name for p in failed.rglob("*.png"))
    assert len(kept) == 4
    assert s3_server.keys() == []
    server.stop()  # the command works on the database, as an operator would after S3 returns

    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in {
                **env,
                "DATA_DIR": server.settings.data_dir,
                "COMFYUI_ENDPOINTS": comfyui_emulator.address,
            }.items()
        )
    )
    command = [str(BIN), "--env-file", str(env_file), "tasks", "retry-storage"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "stored 4 file(s); 2 task(s) clean" in first.stdout
    assert list(failed.rglob("*.png")) == []
    assert len(s3_server.keys()) == 4
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "stored 0 file(s); 0 task(s) clean" in again.stdout

    restarted = server_factory(
        [comfyui_emulator], env={**env, "DATA_DIR": server.settings.data_dir}
    )
    for task_id in ids:
        record = httpx.get(f"{restarted.api}/tasks/{task_id}").json()
        assert record["error_code"] == 0 and record["status"] == "completed" and not record["error"]
        for output in record["outputs"]:
            body = httpx.get(output["url"]).content
            assert body == s3_server.get(output["key"])[0]
