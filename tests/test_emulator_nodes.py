"""Exact behaviour of the emulated nodes, cache, queue and uploads (beyond the replayed shapes)."""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyui_server.core.testing.emulator_thread import EmulatorThread
from PIL import Image

DATA = Path(__file__).parent / "data" / "comfyui-protocol"


def empty_image(
    color: int = 0, width: int = 16, height: int = 16, batch: int = 1
) -> dict[str, Any]:
    inputs = {"width": width, "height": height, "batch_size": batch, "color": color}
    return {"class_type": "EmptyImage", "inputs": inputs}


def save(prefix: str, source: str = "1") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


class Client:
    """Blocking helper: submit a prompt and wait for its history entry."""

    def __init__(self, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        self.http = httpx.Client(base_url=emulator.url, timeout=10)

    def run(self, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
        reply = self.http.post("/prompt", json={"prompt": prompt, **extra})
        assert reply.status_code == 200, reply.text
        prompt_id = reply.json()["prompt_id"]
        for _ in range(1000):
            entry = self.http.get(f"/history/{prompt_id}").json()
            if entry:
                return entry[prompt_id]
            self.http.get("/prompt")  # a short pause that also exercises the server
        pytest.fail("prompt did not finish")

    def images(self, entry: dict[str, Any], node: str = "2") -> list[str]:
        return [image["filename"] for image in entry["outputs"][node]["images"]]

    def error(self, entry: dict[str, Any]) -> dict[str, Any]:
        event, data = entry["status"]["messages"][-1]
        assert event == "execution_error"
        return data


@pytest.fixture
def client(comfyui_emulator: EmulatorThread) -> Iterator[Client]:
    helper = Client(comfyui_emulator)
    yield helper
    helper.http.close()


def recorded_object_info() -> dict[str, Any]:
    found = {}
    for name in ("00_misc_endpoints", "14_filecleaner_custom_node"):
        for line in (DATA / "transcripts" / f"{name}.jsonl").read_text().splitlines()[1:]:
            event = json.loads(line)
            if event.get("kind") == "http" and event["request"]["path"].startswith("/object_info/"):
                found.update(event["response"]["body"])
    return found


def test_object_info_is_the_recorded_one(client: Client) -> None:
    for name in ("corrupt.png", "test_input_ddf55c (1).png", "test_input_ddf55c.png", "a.txt"):
        (client.emulator.input_dir / name).write_bytes(b"x")
    served = client.http.get("/object_info").json()
    for name, info in recorded_object_info().items():
        assert served[name] == info, name
        assert client.http.get(f"/api/object_info/{name}").json() == {name: info}


def test_cache_is_server_wide_by_inputs_and_keeps_only_the_latest_prompt(client: Client) -> None:
    prompt = {"1": empty_image(7), "2": save("cached")}
    first = client.run(prompt, client_id="a")
    (client.emulator.output_dir / "cached_00001_.png").unlink()
    again = client.run(prompt, client_id="b")
    assert client.images(again) == client.images(first) == ["cached_00001_.png"]
    assert again["status"]["messages"][1][1]["nodes"] == ["1", "2"]
    assert not (client.emulator.output_dir / "cached_00001_.png").exists()  # nothing written
    client.run({"1": empty_image(8), "2": save("cached")})
    third = client.run(prompt)  # evicted by the prompt in between
    assert third["status"]["messages"][1][1]["nodes"] == []
    assert client.images(third) == ["cached_00002_.png"]  # really executed again


def test_saveimage_naming_counters_subfolders_and_placeholders(client: Client) -> None:
    batch = client.run({"1": empty_image(1, batch=3), "2": save("jobs/x/img")})
    assert client.images(batch) == ["img_00001_.png", "img_00002_.png", "img_00003_.png"]
    assert batch["outputs"]["2"]["images"][0]["subfolder"] == "jobs/x"
    (client.emulator.output_dir / "jobs/x/img_00003_.png").unlink()
    (client.emulator.output_dir / "jobs/x/img_00001_.png").unlink()
    reused = client.run({"1": empty_image(2), "2": save("jobs/x/img")})
    assert client.images(reused) == ["img_00003_.png"]
    sized = client.run(
        {"1": empty_image(3, width=80, height=48), "2": save("%width%x%height%_%year%")}
    )
    assert re.fullmatch(r"80x48_\d{4}_00001_\.png", client.images(sized)[0])
    escaped = client.run({"1": empty_image(4), "2": save("../escape")})
    error = client.error(escaped)
    assert error["exception_type"] == "Exception"
    assert "Saving image outside the output folder is not allowed" in error["exception_message"]
    assert error["executed"] == ["1"]


def test_preview_image_writes_to_temp_with_a_random_infix(client: Client) -> None:
    preview = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    entry = client.run({"1": empty_image(5), "2": preview})
    (image,) = entry["outputs"]["2"]["images"]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", image["filename"])
    assert image == {"filename": image["filename"], "subfolder": "", "type": "temp"}
    assert (client.emulator.temp_dir / image["filename"]).is_file()
    view = client.http.get("/view", params={"filename": image["filename"], "type": "temp"})
    assert view.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(view.content)).size == (16, 16)


def test_queue_pending_is_in_heap_order_and_front_jumps_ahead(client: Client) -> None:
    client.emulator.hang()
    prompts = [{"1": empty_image(c), "2": save("q")} for c in range(5)]
    numbers = [client.http.post("/prompt", json={"prompt": prompts[0]}).json()["number"]]
    for index, prompt in enumerate(prompts[1:], start=1):
        reply = client.http.post("/prompt", json={"prompt": prompt, "front": index == 3})
        numbers.append(reply.json()["number"])
    assert numbers == [0, 1, 2, -3, 4]
    pending = client.http.get("/queue").json()["queue_pending"]
    assert [item[0] for item in pending] == [-3, 2, 1, 4]
    client.http.post("/queue", json={"clear": True})
    client.http.post("/interrupt")
    client.emulator.hang(False)


def test_history_max_items_and_offset(client: Client) -> None:
    ids = [client.run({"1": empty_image(c), "2": save("h")}, prompt_id=f"p{c}") for c in range(4)]
    assert len(ids) == 4
    assert list(client.http.get("/history", params={"max_items": 2}).json()) == ["p2", "p3"]
    window = client.http.get("/history", params={"max_items": 2, "offset": 1}).json()
    assert list(window) == ["p1", "p2"]
    client.http.post("/history", json={"delete": ["p1", "nope"]})
    assert list(client.http.get("/history").json()) == ["p0", "p2", "p3"]


def upload(client: Client, content: bytes, name: str = "u.png", **fields: str) -> httpx.Response:
    return client.http.post("/upload/image", files={"image": (name, content)}, data=fields)


def png(color: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_dedupes_renames_overwrites_and_rejects_escapes(client: Client) -> None:
    assert upload(client, png((1, 1, 1))).json() == {
        "name": "u.png",
        "subfolder": "",
        "type": "input",
    }
    assert upload(client, png((1, 1, 1))).json()["name"] == "u.png"
    assert upload(client, png((2, 2, 2))).json()["name"] == "u (1).png"
    assert upload(client, png((3, 3, 3)), overwrite="true").json()["name"] == "u.png"
    nested = upload(client, png((4, 4, 4)), subfolder="jobs/1", type="temp").json()
    assert nested == {"name": "u.png", "subfolder": "jobs/1", "type": "temp"}
    assert (client.emulator.temp_dir / "jobs/1/u.png").is_file()
    assert upload(client, png((5, 5, 5)), subfolder="../../etc").status_code == 400
    assert client.http.post("/upload/image", data={"notimage": "x"}).status_code == 400


def test_load_image_from_uploads_subfolders_and_output(client: Client) -> None:
    upload(client, png((10, 20, 30)), name="in.png", subfolder="sub")
    scale = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "bilinear",
            "width": 6,
            "height": 0,
            "crop": "center",
        },
    }
    invert = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    loaded = client.run(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "sub/in.png"}},
            "2": scale,
            "3": invert,
            "4": save("loaded", "3"),
        }
    )
    (name,) = client.images(loaded, "4")
    image = Image.open(client.emulator.output_dir / name)
    assert image.size == (6, 3)
    assert image.getpixel((0, 0)) == (245, 235, 225)
    again = client.run(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": f"{name} [output]"}},
            "2": save("again"),
        }
    )
    assert client.images(again) == ["again_00001_.png"]


def test_corrupt_image_and_huge_allocation_fail_like_comfyui(client: Client) -> None:
    (client.emulator.input_dir / "corrupt.png").write_bytes(b"not an image")
    load = {"class_type": "LoadImage", "inputs": {"image": "corrupt.png"}}
    error = client.error(client.run({"1": load, "2": save("never")}))
    path = client.emulator.input_dir / "corrupt.png"
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == f"cannot identify image file '{path}'\n"
    assert error["current_inputs"] == {"image": ["corrupt.png"]}
    assert error["current_outputs"] == ["1", "2"]
    huge = client.run({"1": empty_image(0, 16384, 16384, 4096), "2": save("never")})
    error = client.error(huge)
    assert error["exception_type"] == "RuntimeError"
    assert (
        "can't allocate memory: you tried to allocate 4398046511104 bytes"
        in (error["exception_message"])
    )


def test_file_cleaner_deletes_and_reports_missing_files(client: Client) -> None:
    client.run({"1": empty_image(9), "2": save("clean/me")})
    target = client.emulator.output_dir / "clean/me_00001_.png"
    assert target.exists()
    cleaner = {"class_type": "Clean input and output file", "inputs": {"type": "output"}}
    cleaner["inputs"]["path"] = "clean/me_00001_.png"
    entry = client.run({"1": cleaner})
    assert entry["status"]["status_str"] == "success" and entry["outputs"] == {}
    assert not target.exists()
    cleaner["inputs"]["path"] = "missing.png"
    error = client.error(client.run({"1": cleaner}))
    assert error["exception_type"] == "FileNotFoundError"
    assert error["exception_message"] == f"{client.emulator.output_dir / 'missing.png'} not found\n"


def binary_frames(emulator: EmulatorThread, flags: dict[str, Any] | None) -> list[bytes]:
    """Run SaveImageWebsocket for a 3-image batch and return the binary frames received."""
    from websockets.sync.client import connect

    prompt = {
        "1": empty_image(3368652, 32, 24, 3),
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    frames = []
    with connect(f"ws://{emulator.address}/ws?clientId=bin") as ws:
        if flags is not None:
            ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        ws.recv(timeout=5)  # status
        if flags is not None:
            assert json.loads(ws.recv(timeout=5))["type"] == "feature_flags"
        reply = httpx.post(f"{emulator.url}/prompt", json={"prompt": prompt, "client_id": "bin"})
        prompt_id = reply.json()["prompt_id"]
        while True:
            message = ws.recv(timeout=5)
            if isinstance(message, bytes):
                frames.append(message)
            elif json.loads(message)["data"] == {"node": None, "prompt_id": prompt_id}:
                return frames


def test_save_image_websocket_sends_type_1_or_type_4_frames(
    comfyui_emulator: EmulatorThread,
) -> None:
    sample1 = (DATA / "samples" / "ws_binary_frame_type1_full.bin").read_bytes()
    sample4 = (DATA / "samples" / "ws_binary_frame_type4_full.bin").read_bytes()
    legacy = binary_frames(comfyui_emulator, None)
    assert len(legacy) == 3
    assert all(frame[:8] == sample1[:8] for frame in legacy)
    assert Image.open(io.BytesIO(legacy[0][8:])).size == (32, 24)
    with_metadata = binary_frames(comfyui_emulator, {"supports_preview_metadata": True})
    assert len(with_metadata) == 3  # never cached: it runs again
    (length,) = struct.unpack(">I", with_metadata[0][4:8])
    assert with_metadata[0][:8] == sample4[:8]  # same event type and metadata length
    metadata = json.loads(with_metadata[0][8 : 8 + length])
    recorded = json.loads(sample4[8 : 8 + length])
    assert list(metadata) == list(recorded)
    assert metadata["node_id"] == "2" and metadata["image_type"] == "image/png"
    assert with_metadata[0][8 + length : 16 + length] == b"\x89PNG\r\n\x1a\n"


def test_fixture_factory_makes_independent_emulators(
    comfyui_emulator_factory: Callable[..., EmulatorThread],
) -> None:
    first, second = comfyui_emulator_factory(), comfyui_emulator_factory(node_time=0.01)
    assert first.port != second.port and first.base_dir != second.base_dir
    for emulator in (first, second):
        assert httpx.get(f"{emulator.url}/queue").json() == {
            "queue_running": [],
            "queue_pending": [],
        }
