"""The dashboard's rules without a server: session cookies, what a page shows of params and
timings, the generated form, and thumbnails (bounded downloads, made once)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from pathlib import Path

import httpx
import pytest
from comfyui_server.core import EndpointState, Task, TaskEvent, Workflow
from comfyui_server.core.auth import Keyring
from comfyui_server.core.config import get_settings
from comfyui_server.plugins.dashboard.forms import controls, form_params
from comfyui_server.plugins.dashboard.session import Signer, Viewer, check_key
from comfyui_server.plugins.dashboard.thumbnails import Thumbnailer, ThumbnailError, shrink
from comfyui_server.plugins.dashboard.views import (
    durations,
    error_view,
    fleet_rows,
    param_rows,
    summarise_value,
    timeline,
)
from litestar.datastructures import FormMultiDict, UploadFile
from PIL import Image

ALICE, ROOT = "alice-secret-000000", "root-secret-000000"


def keyring(**env: str) -> Keyring:
    return Keyring(
        get_settings({"API_KEYS": f"alice:{ALICE}", "ADMIN_API_KEYS": f"root:{ROOT}", **env})
    )


# ---- sessions ----------------------------------------------------------------------------------


def test_a_cookie_stands_for_its_key_until_it_expires():
    ring, signer = keyring(), Signer(b"s" * 32, 3600)
    alice = check_key(ring, ALICE)
    cookie = signer.issue(alice, now=1000)
    assert signer.verify(cookie, ring, now=1000 + 3599) == alice
    assert signer.verify(cookie, ring, now=1000 + 3601) is None
    assert check_key(ring, "wrong-wrong-wrong-wrong") is None
    assert check_key(ring, "  ") is None


def test_a_forged_or_foreign_cookie_is_refused():
    ring, signer = keyring(), Signer(b"s" * 32, 3600)
    cookie = signer.issue(check_key(ring, ALICE), now=1000)
    name, expires, mac = cookie.split(".")
    root_name = signer.issue(check_key(ring, ROOT), now=1000).split(".")[0]
    for forged in (
        f"{root_name}.{expires}.{mac}",  # someone else's name
        f"{name}.{int(expires) + 10**6}.{mac}",  # a longer life
        f"{name}.{expires}.{mac[:-2]}AA",
        "garbage",
        "a.b.c",
        "",
    ):
        assert signer.verify(forged, ring, now=1000) is None, forged
    assert Signer(b"t" * 32, 3600).verify(cookie, ring, now=1000) is None  # another secret


def test_changing_a_keys_secret_ends_its_sessions():
    signer = Signer(b"s" * 32, 3600)
    cookie = signer.issue(check_key(keyring(), ALICE), now=1000)
    rotated = keyring(API_KEYS="alice:alice-new-secret-0000")
    assert signer.verify(cookie, rotated, now=1000) is None
    removed = Keyring(get_settings({"ADMIN_API_KEYS": f"root:{ROOT}"}))
    assert signer.verify(cookie, removed, now=1000) is None


def test_viewers_see_their_own_tasks_and_admins_all():
    ring = keyring()
    alice, root = Viewer(key=check_key(ring, ALICE)), Viewer(key=check_key(ring, ROOT))
    anyone = Viewer(key=None)
    mine, theirs = Task(workflow="w", client="alice"), Task(workflow="w", client="bob")
    assert alice.sees(mine) and not alice.sees(theirs) and alice.client_filter == "alice"
    assert root.sees(theirs) and root.client_filter is None and root.admin
    assert anyone.sees(theirs) and anyone.admin and not anyone.signed_in


# ---- what pages show ---------------------------------------------------------------------------


def test_huge_and_image_params_become_size_placeholders():
    data_url = "data:image/png;base64," + "A" * 400_000
    text, summarised = summarise_value(data_url, "image")
    assert summarised and text == "image/png, 300.0 kB (base64, not shown)"
    assert summarise_value("QUJD" * 10, "image") == ("image, 30 bytes (base64, not shown)", True)
    assert summarise_value("https://x.test/a.png", "image") == ("https://x.test/a.png", False)
    assert summarise_value("a cat", "string") == ("a cat", False)
    assert summarise_value(7, "integer") == ("7", False)
    long_text, summarised = summarise_value("x" * 5000, "string")
    assert summarised and long_text.endswith("(5000 characters)") and len(long_text) < 300
    big_list, summarised = summarise_value(list(range(1000)), None)
    assert summarised and len(big_list) < 300


def test_param_rows_follow_the_workflow_spec(tmp_path):
    workflow = demo_workflow()
    task = Task(workflow="demo", params={"width": 8, "image": "QUJD" * 100, "extra": "kept"})
    rows = {r.name: r for r in param_rows(task, workflow)}
    assert rows["width"].value == "8" and not rows["width"].summarised
    assert rows["image"].summarised and "QUJD" not in rows["image"].value
    assert rows["extra"].value == "kept"


def at(seconds: float) -> dt.datetime:
    return dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def test_the_timeline_shows_the_time_spent_in_each_stage():
    events = [
        TaskEvent(task_id=1, status=s, at=at(t), endpoint="e:1" if t else None)
        for s, t in (
            ("accepted", 0),
            ("queued", 0),
            ("dispatched", 2),
            ("running", 3),
            ("completed", 8),
        )
    ]
    stages = timeline(events, now=at(100), final=True)
    assert [(s.status, s.seconds) for s in stages] == [
        ("accepted", 0.0),
        ("queued", 2.0),
        ("dispatched", 1.0),
        ("running", 5.0),
        ("completed", None),
    ]
    assert [round(s.offset) for s in stages] == [0, 0, 25, 38, 100]
    assert sum(s.width for s in stages) == pytest.approx(100)
    assert not any(s.current for s in stages)

    live = timeline(events[:4], now=at(13), final=False)
    assert live[-1].current and live[-1].seconds == 10.0  # running so far
    assert timeline([], now=at(0), final=False) == []


def test_durations_count_until_now_while_unfinished():
    task = Task(workflow="w", status="running", created_at=at(0), dispatched_at=at(4))
    took = durations(task, now=at(10))
    assert (took.waited, took.ran, took.total) == (4.0, 6.0, 10.0)
    done = Task(workflow="w", status="failed", created_at=at(0), finished_at=at(1))
    took = durations(done, now=at(50))
    assert (took.waited, took.ran, took.total) == (1.0, None, 1.0)


def test_comfyuis_node_is_split_out_of_the_error():
    view = error_view(Task(workflow="w", error="node 9 (SaveImage): OSError: disk full"))
    assert (view.node, view.node_type, view.message) == ("9", "SaveImage", "OSError: disk full")
    assert error_view(Task(workflow="w", error="gave up")).node is None
    assert error_view(Task(workflow="w")) is None


def test_fleet_rows_say_what_each_endpoint_can_run():
    workflow = demo_workflow()
    states = [
        EndpointState(name="a:1", url="http://a:1", status="up", node_classes=None),
        EndpointState(
            name="b:1",
            url="http://b:1",
            status="down",
            node_classes=frozenset(workflow.node_classes),
            last_error="refused",
        ),
        EndpointState(name="c:1", url="http://c:1", node_classes=frozenset({"Other"})),
    ]
    rows = fleet_rows(states, [workflow])
    assert [(r.node_classes, r.workflows) for r in rows] == [
        (None, ("demo",)),
        (len(workflow.node_classes), ("demo",)),
        (1, ()),
    ]
    assert rows[1].last_error == "refused"


# ---- the generated form -------------------------------------------------------------------


def demo_workflow() -> Workflow:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "width": 64,
                "height": 64,
                "upscale_method": "nearest",
                "crop": "disabled",
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "d"}},
    }
    spec = {
        "params": {
            "image": {"type": "image", "target": "1.image"},
            "width": {
                "type": "integer",
                "target": "2.width",
                "default": 64,
                "minimum": 1,
                "maximum": 4096,
                "description": "Pixels.",
            },
            "scale": {"type": "number", "target": "2.height", "default": 1.5},
            "method": {
                "type": "string",
                "target": "2.upscale_method",
                "choices": ["nearest", "bilinear"],
                "default": "nearest",
            },
            "crop": {"type": "boolean", "target": "2.crop", "default": True},
            "prefix": {"type": "string", "target": "3.filename_prefix"},
        }
    }
    return Workflow.from_data("demo", graph, spec)


def test_controls_follow_each_params_type():
    by_name = {c.name: c for c in controls(demo_workflow())}
    assert {n: c.kind for n, c in by_name.items()} == {
        "image": "image",
        "width": "number",
        "scale": "number",
        "method": "select",
        "crop": "checkbox",
        "prefix": "textarea",
    }
    width = by_name["width"]
    assert (width.minimum, width.maximum, width.step, width.value) == (1, 4096, "1", "64")
    assert width.description == "Pixels."
    assert by_name["scale"].step == "any"
    assert by_name["method"].options == (("nearest", "nearest"), ("bilinear", "bilinear"))
    assert by_name["crop"].value is True
    assert by_name["prefix"].required and not by_name["width"].required
    shown = controls(demo_workflow(), {"width": "12", "crop": False, "image__url": "https://x"})
    assert {c.name: c.value for c in shown}["width"] == "12"
    assert {c.name: c.value for c in shown}["crop"] is False
    assert {c.name: c.value for c in shown}["image"] == "https://x"


async def test_a_posted_form_becomes_typed_params():
    picture = io.BytesIO()
    Image.new("RGB", (2, 2)).save(picture, "PNG")
    upload = UploadFile(content_type="image/png", filename="p.png", file_data=picture.getvalue())
    form = FormMultiDict(
        [
            ("image", upload),
            ("width", "12"),
            ("scale", "2.5"),
            ("method", "bilinear"),
            ("prefix", "out"),
            ("image__url", ""),
        ]
    )
    params, shown, errors = await form_params(demo_workflow(), form, max_image_bytes=10_000)
    assert errors == {}
    assert params["image"].startswith("data:image/png;base64,iVBOR")
    assert {k: v for k, v in params.items() if k != "image"} == {
        "width": 12,
        "scale": 2.5,
        "method": "bilinear",
        "crop": False,
        "prefix": "out",
    }
    assert shown["width"] == "12"


async def test_bad_form_values_are_reported_by_field():
    big = UploadFile(content_type="image/png", filename="big.png", file_data=b"x" * 200)
    form = FormMultiDict(
        [("image", big), ("width", "ten"), ("scale", "x"), ("method", "cubic"), ("crop", "true")]
    )
    params, shown, errors = await form_params(demo_workflow(), form, max_image_bytes=100)
    assert set(errors) == {"image", "width", "scale", "method"}
    assert "100 byte limit" in errors["image"]
    assert params == {"crop": True}  # empty prefix left out: the engine reports it missing
    assert shown["width"] == "ten"
    url_form = FormMultiDict(
        [
            ("image", UploadFile(content_type="", filename="", file_data=b"")),
            ("image__url", " https://x.test/a.png "),
        ]
    )
    params, _, errors = await form_params(demo_workflow(), url_form, max_image_bytes=100)
    assert params["image"] == "https://x.test/a.png" and not errors


# ---- thumbnails ----------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_shrink_bounds_the_longest_side_and_keeps_the_shape(tmp_path):
    original = tmp_path / "big.png"
    original.write_bytes(png(1000, 500))
    target = tmp_path / "t.webp"
    shrink(original, target, 256)
    with Image.open(target) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (256, 128))
    original.write_bytes(b"not an image")
    with pytest.raises(ThumbnailError):
        shrink(original, tmp_path / "u.webp", 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "t.webp"]


def thumbnailer(tmp_path: Path, handler, max_bytes: int = 1_000_000) -> Thumbnailer:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Thumbnailer(tmp_path / "thumbs", http, size=64, max_bytes=max_bytes)


async def test_a_thumbnail_is_made_once_and_served_from_disk_after(tmp_path):
    calls = []

    def handler(request):
        calls.append(request.url)
        return httpx.Response(200, content=png(300, 100))

    maker = thumbnailer(tmp_path, handler)
    first = await maker.get("local:1/a.png", "http://files.test/a.png")
    again = await maker.get("local:1/a.png", "http://files.test/a.png")
    assert first == again and len(calls) == 1
    with Image.open(first) as thumb:
        assert thumb.size == (64, 21)
    assert first.is_relative_to(tmp_path / "thumbs")
    assert not list((tmp_path / "thumbs").rglob("*.part"))


async def test_concurrent_requests_share_one_download(tmp_path):
    calls = []

    async def handler(request):
        calls.append(request.url)
        await asyncio.sleep(0.05)
        return httpx.Response(200, content=png(100, 100))

    maker = thumbnailer(tmp_path, handler)
    paths = await asyncio.gather(*(maker.get("k", "http://files.test/k") for _ in range(5)))
    assert len(set(paths)) == 1 and len(calls) == 1


@pytest.mark.parametrize("declared", [True, False])
async def test_an_oversized_original_is_refused_and_leaves_nothing(tmp_path, declared):
    body = png(400, 400) + b"\0" * 5000

    async def chunks():
        yield body[:3000]
        yield body[3000:]

    def handler(request):
        if declared:
            return httpx.Response(200, content=body)
        return httpx.Response(200, content=chunks())  # streamed, no content-length

    maker = thumbnailer(tmp_path, handler, max_bytes=4000)
    with pytest.raises(ThumbnailError, match="larger than 4000 bytes"):
        await maker.get("big", "http://files.test/big")
    assert not [p for p in (tmp_path / "thumbs").rglob("*") if p.is_file()]


async def test_a_missing_or_broken_original_is_an_error(tmp_path):
    maker = thumbnailer(tmp_path, lambda request: httpx.Response(404))
    with pytest.raises(ThumbnailError, match="404"):
        await maker.get("gone", "http://files.test/gone")

    def refuse(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ThumbnailError, match="cannot fetch"):
        await thumbnailer(tmp_path, refuse).get("down", "http://files.test/down")
    assert not [p for p in (tmp_path / "thumbs").rglob("*") if p.is_file()]


async def test_small_text_outputs_are_read_for_a_preview(tmp_path):
    maker = thumbnailer(tmp_path, lambda request: httpx.Response(200, text="héllo"))
    assert await maker.read_text("http://files.test/t.txt", limit=100) == "héllo"
    assert await maker.read_text("http://files.test/t.txt", limit=3) is None
