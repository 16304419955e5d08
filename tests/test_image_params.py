"""Image params by base64, data URL or URL; URLs guarded against internal addresses."""

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fixtures_app import wait_final
from PIL import Image


def png_bytes(color=(10, 200, 30), size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def image_server():
    """Serves /img.png, /text.txt, /big.png, and /redirect -> a link-local address."""
    image = png_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
                return
            body = {"/img.png": image, "/text.txt": b"hello", "/big.png": b"x" * 5000}.get(
                self.path
            )
            self.send_response(200 if body else 404)
            self.send_header("content-length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", image
    server.shutdown()


def invert(server, image, **extra):
    return httpx.post(
        server.api, json={"service_type": "invert", "params": {"image": image, **extra}}, timeout=30
    )


def uploaded_bytes(emulator, record):
    (prompt,) = [
        p for p in emulator.prompts_received if p["prompt_id"] == record["comfyui_task_id"]
    ]
    name = prompt["prompt"]["1"]["inputs"]["image"]
    return (emulator.input_dir / name).read_bytes()


def test_image_by_url_is_fetched_uploaded_and_used(comfyui_emulator, server_factory, image_server):
    base, image = image_server
    server = server_factory([comfyui_emulator])
    response = invert(server, f"{base}/img.png", width=6, height=4)
    assert response.status_code == 200, response.text
    record = wait_final(server.api, response.json()["id"])
    assert record["status"] == "completed", record
    assert uploaded_bytes(comfyui_emulator, record) == image
    inverted = Image.open(io.BytesIO(httpx.get(record["outputs"][0]["url"]).content))
    assert inverted.convert("RGB").getpixel((0, 0)) == (245, 55, 225)


def test_data_url_and_plain_base64_both_work(comfyui_emulator, server_factory):
    server = server_factory([comfyui_emulator])
    raw = base64.b64encode(png_bytes((1, 2, 3))).decode()
    for value in (raw, f"data:image/png;base64,{raw}"):
        record = wait_final(server.api, invert(server, value).json()["id"])
        assert record["status"] == "completed"
        assert uploaded_bytes(comfyui_emulator, record) == png_bytes((1, 2, 3))


def test_loopback_url_is_refused_without_the_allowance(
    comfyui_emulator, server_factory, image_server
):
    base, _ = image_server
    server = server_factory([comfyui_emulator], env={"URL_ALLOWLIST": ""})
    response = invert(server, f"{base}/img.png")
    assert response.status_code == 422
    assert response.json()["extra"][0]["key"] == "params.image"
    assert "URL_ALLOWLIST" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/text.txt", 422, "not an image"),
        ("/missing.png", 422, "404"),
        ("/redirect", 422, "169.254.169.254"),
        ("/big.png", 413, "MAX_IMAGE_BYTES"),
    ],
)
def test_bad_urls_name_the_param(
    comfyui_emulator, server_factory, image_server, path, status, words
):
    base, _ = image_server
    server = server_factory([comfyui_emulator], env={"MAX_IMAGE_BYTES": "4000"})
    response = invert(server, base + path)
    assert response.status_code == status, response.text
    assert response.json()["extra"][0]["key"] == "params.image"
    assert words in response.json()["detail"]
