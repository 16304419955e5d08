"""The s3_storage plugin against a real S3 HTTP server (moto), alone and inside the server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from comfyui_server.core import ConfigError, OutputRef, Task
from comfyui_server.core.config import get_settings
from comfyui_server.plugins import s3_storage
from fixtures_app import wait_final, wait_until
from fixtures_storage import artifact

BATCH = {"batch_size": 3, "width": 8, "height": 8}


@pytest.fixture
def plugin() -> Iterator[object]:
    """The plugin's hooks called directly; its state is released afterwards."""
    yield s3_storage
    s3_storage.shutdown()


# ---------------------------------------------------------------------------------------------
# Keys, content types, settings: no server needed.
# ---------------------------------------------------------------------------------------------

ALL_PLACEHOLDERS = (
    "{prefix}{date}/{workflow}/{client_task_id}/{comfyui_task_id}/{task_id}/{node_id}/"
    "{subfolder}/{filename}"
)


@pytest.mark.parametrize(
    ("filename", "subfolder", "client_task_id"),
    [
        ("../../escape.png", "", None),
        ("x.png", "/abs/dir", None),
        ("x.png", "..\\win", "..\\..\\c"),
        ("C:\\evil\\x.png", "../../..", "../../../etc"),
        ("..", "/", "/"),
        ("a\x00b.png", "sub/../../..", "ok"),
    ],
)
@pytest.mark.parametrize("template", ["{prefix}{task_id}/{path}", ALL_PLACEHOLDERS])
def test_keys_stay_under_the_prefix(filename, subfolder, client_task_id, template):
    task = Task(id=7, workflow="../wf", client_task_id=client_task_id, comfyui_task_id="p/../q")
    key = s3_storage.output_key(template, "outputs/", task, artifact(filename, subfolder))
    assert key.startswith("outputs/"), key
    parts = key.split("/")
    assert ".." not in parts and "" not in parts, key
    assert "\\" not in key and "\x00" not in key and ":" not in key, key


def test_default_key_is_task_then_comfyui_path():
    task = Task(id=12, workflow="blank")
    template = s3_storage.S3Settings().s3_key_template
    assert s3_storage.output_key(template, "", task, artifact("a.png")) == "12/a.png"
    assert s3_storage.output_key(template, "p/", task, artifact("a.png", "x")) == "p/12/x/a.png"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{prefix}{task}/{filename}", "unknown placeholder(s) task"),
        ("{prefix}{task_id}", "{filename} or {path}"),
        ("{prefix}{filename.upper}", "unknown placeholder(s) filename.upper"),
        ("{prefix}{task_id:q}/{filename}", "S3_KEY_TEMPLATE"),
        ("{prefix}{task_id/{filename}", "S3_KEY_TEMPLATE"),
    ],
)
def test_a_bad_key_template_stops_start_up(template, message):
    with pytest.raises(ConfigError, match="S3_KEY_TEMPLATE") as info:
        s3_storage.check_template(template)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("a.png", "image/png"),
        ("a.WEBP", "image/webp"),
        ("clip.mp4", "video/mp4"),
        ("a.wav", "audio/wav"),
        ("a.flac", "audio/flac"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.latent", "application/octet-stream"),
    ],
)
def test_content_types_do_not_depend_on_the_host(filename, content_type):
    assert s3_storage.content_type_of(artifact(filename)) == content_type


def options(**env: str) -> dict:
    return s3_storage.store_options(get_settings(env).load(s3_storage.S3Settings))


def test_addressing_and_credentials_reach_obstore():
    aws = options(S3_BUCKET="b", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    assert aws["config"] == {
        "virtual_hosted_style_request": True,
        "access_key_id": "k",
        "secret_access_key": "s",
    }
    assert aws["client_options"]["allow_http"] is False

    minio = options(S3_BUCKET="b", S3_ENDPOINT_URL="http://minio:9000/", S3_REGION_NAME="eu")
    assert minio["config"] == {
        "virtual_hosted_style_request": False,
        "endpoint": "http://minio:9000",
        "region": "eu",
    }
    assert minio["client_options"]["allow_http"] is True

    virtual = options(S3_BUCKET="b", S3_ENDPOINT_URL="https://s3.example", S3_ADDRESSING="virtual")
    assert virtual["config"]["endpoint"] == "https://b.s3.example"

    with pytest.raises(ConfigError, match="S3_ADDRESSING"):
        options(S3_BUCKET="b", S3_ADDRESSING="sideways")
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL"):
        options(S3_BUCKET="b", S3_ENDPOINT_URL="minio:9000")


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
    ],
)
async def test_half_a_key_pair_stops_start_up(plugin, given, missing):
    settings = get_settings({"S3_BUCKET": "b", given: "x"})
    with pytest.raises(ConfigError, match=f"^{missing} is not set but {given} is"):
        await plugin.startup(settings=settings)


def test_the_server_does_not_start_with_half_a_key_pair(server_factory, comfyui_emulator, capfd):
    env = {"S3_BUCKET": "b", "AWS_ACCESS_KEY_ID": "x"}
    with pytest.raises(RuntimeError, match="did not start"):
        server_factory([comfyui_emulator], env, wait_up=False)
    assert "AWS_SECRET_ACCESS_KEY is not set" in capfd.readouterr().err


async def test_without_a_bucket_the_plugin_stands_aside(plugin):
    await plugin.startup(settings=get_settings({"AWS_ACCESS_KEY_ID": "x"}))
    assert await plugin.store(artifact=artifact("a.png"), task=Task(id=1, workflow="w")) is None
    ref = OutputRef(
        key="1/a.png", filename="a.png", node_id="9", content_type="image/png", size=1, storage="s3"
    )
    assert await plugin.output_url(output=ref) is None


# ---------------------------------------------------------------------------------------------
# The plugin alone against moto.
# ---------------------------------------------------------------------------------------------


async def test_small_and_large_outputs_stream_into_the_bucket(plugin, s3_server):
    await plugin.startup(settings=get_settings(s3_server.env(S3_KEY_PREFIX="out/")))
    task = Task(id=5, workflow="w")
    small = [b"\x89PNG", b"-" * 1000]
    large = [bytes([i]) * 500_000 for i in range(13)]  # 6.5 MB: two 5 MiB parts

    stored_small = await plugin.store(artifact=artifact("s.png", data=small), task=task)
    stored_large = await plugin.store(artifact=artifact("l.mp4", "v", large), task=task)

    assert (stored_small.key, stored_small.size) == ("out/5/s.png", 1004)
    assert stored_small.storage == stored_large.storage == "s3"
    assert (stored_large.key, stored_large.size) == ("out/5/v/l.mp4", 6_500_000)
    assert s3_server.get("out/5/s.png") == (b"".join(small), "image/png")
    assert s3_server.get("out/5/v/l.mp4") == (b"".join(large), "video/mp4")


async def test_a_failing_download_surfaces_as_itself_and_leaves_no_object(plugin, s3_server):
    """Core tells a download failure (code 3) from a storage failure (code 2) by its type."""

    class Broken(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"x" * 500_000
        raise Broken("ComfyUI went away")

    await plugin.startup(settings=get_settings(s3_server.env()))
    with pytest.raises(Broken):
        await plugin.store(artifact=artifact("b.png", stream=broken), task=Task(id=1, workflow="w"))
    assert s3_server.keys() == []


async def test_an_unreachable_bucket_warns_but_does_not_stop_start_up(plugin, s3_server, caplog):
    caplog.set_level(logging.WARNING, logger=s3_storage.__name__)
    with s3_server.down():
        await plugin.startup(settings=get_settings(s3_server.env()))
        with pytest.raises(s3_storage.S3UploadError, match=r"S3 upload of '1/a\.png' failed"):
            await plugin.store(
                artifact=artifact("a.png", data=[b"x"]), task=Task(id=1, workflow="w")
            )
    (record,) = caplog.records
    assert f"S3 bucket {s3_server.bucket!r} is not reachable" in record.getMessage()
    assert "\n" not in record.getMessage()
    # back up: the same plugin stores again, no restart needed
    stored = await plugin.store(
        artifact=artifact("a.png", data=[b"x"]), task=Task(id=1, workflow="w")
    )
    assert s3_server.get(stored.key) == (b"x", "image/png")


async def test_a_missing_bucket_is_named_in_the_warning(plugin, s3_server, caplog):
    caplog.set_level(logging.WARNING, logger=s3_storage.__name__)
    await plugin.startup(settings=get_settings(s3_server.env(S3_BUCKET="no-such-bucket")))
    (record,) = caplog.records
    assert "'no-such-bucket' is not reachable" in record.getMessage()
    assert "404" in record.getMessage()


# ---------------------------------------------------------------------------------------------
# Inside the server, on the ComfyUI emulator.
# ---------------------------------------------------------------------------------------------


def submit(server, **extra) -> dict:
    body = {"service_type": "blank", "params": BATCH, **extra}
    response = httpx.post(server.api, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def signed_at(url: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Signature"], url
    return query["X-Amz-Date"][0], query["X-Amz-Expires"][0]


def test_a_batch_lands_in_the_bucket_and_is_served_by_presigned_urls(
    comfyui_emulator, server_factory, s3_server
):
    env = s3_server.env(S3_KEY_PREFIX="renders/", S3_PRESIGN_TTL="600")
    server = server_factory([comfyui_emulator], env)
    record = wait_final(server.api, submit(server)["id"])
    assert record["status"] == "completed", record
    assert record["error_code"] == 0
    outputs = record["outputs"]
    assert len(outputs) == 3
    assert record["s3_key"] == outputs[0]["key"]
    assert s3_server.keys() == sorted(f"renders/{record['id']}/{o['filename']}" for o in outputs)

    for output in outputs:
        produced = (comfyui_emulator.output_dir / output["filename"]).read_bytes()
        assert produced.startswith(b"\x89PNG")
        assert s3_server.get(output["key"]) == (produced, "image/png")
        assert output["size"] == len(produced)
        url = output["url"]
        assert url.startswith(f"{s3_server.endpoint_url}/{s3_server.bucket}/{output['key']}?")
        assert signed_at(url)[1] == "600"
        assert httpx.get(url).content == produced
    # S3 won over the embedded default: nothing went to local disk
    assert not (Path(server.settings.data_dir) / "outputs" / str(record["id"])).exists()


def test_every_read_signs_the_url_afresh(comfyui_emulator, server_factory, s3_server):
    server = server_factory([comfyui_emulator], s3_server.env())
    task_id = wait_final(server.api, submit(server, params={"width": 8, "height": 8})["id"])["id"]
    first = httpx.get(f"{server.api}/tasks/{task_id}").json()["outputs"][0]["url"]
    date, expires = signed_at(first)
    assert expires == "3600"

    def signed_later() -> str | None:
        url = httpx.get(f"{server.api}/tasks/{task_id}").json()["outputs"][0]["url"]
        return url if signed_at(url)[0] > date else None

    # SigV4 dates have one-second resolution: within about a second a read signs anew
    later = wait_until(signed_later, timeout=5, interval=0.2)
    assert later != first
    assert httpx.get(later).status_code == 200


def test_outputs_go_to_the_fallback_folder_while_s3_is_down(
    comfyui_emulator, server_factory, s3_server, webhook_receiver, tmp_path
):
    failed = tmp_path / "failed"
    env = s3_server.env(DEFAULT_FAILED_IMAGE_PATH=str(failed))
    server = server_factory([comfyui_emulator], env)
    with s3_server.down():
        task = submit(server, client_callback_url=webhook_receiver.url)
        (delivery,) = webhook_receiver.wait_for(1, timeout=30)
    record = delivery.json()
    assert record["id"] == task["id"]
    assert (record["status"], record["error_code"]) == ("failed", 2)
    assert "fallback" in record["error"] and "S3 upload of" in record["error"]
    assert len(record["outputs"]) == 3
    for output in record["outputs"]:
        produced = (comfyui_emulator.output_dir / output["filename"]).read_bytes()
        assert output["key"] == output["filename"]  # ComfyUI's relative path
        assert (failed / output["key"]).read_bytes() == produced
    assert s3_server.keys() == []
    assert wait_final(server.api, task["id"])["error_code"] == 2
