"""Replay the recorded ComfyUI sessions against the emulator and compare what comes back.

Each transcript in tests/data/comfyui-protocol (a copy of the recordings of a real ComfyUI
0.3.64) is replayed over real HTTP and websockets: the same requests, sent when the emulator's
clients have seen as many messages as the recorded clients had at that moment. Then, per client,
the message types and their order, who received what, status codes, headers and body shapes
must match the recording. Ids, timestamps, sizes and file counters are compared by type only.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

DATA = Path(__file__).parent / "data" / "comfyui-protocol"
SHARED = Path("/work/shared/comfyui-protocol")

# Scalars compared by value; everything else only by type.
EXACT_KEYS = {
    "type",
    "messages",
    "status_str",
    "completed",
    "node",
    "display_node",
    "node_id",
    "node_type",
    "display_node_id",
    "real_node_id",
    "parent_node_id",
    "parent_node",
    "state",
    "queue_remaining",
    "value",
    "max",
    "exception_type",
    "class_type",
    "input_name",
    "received_value",
    "details",
    "message",
    "subfolder",
    "prompt_id",
    "image_type",
    "supports_preview_metadata",
    "max_upload_size",
    "event_type",
    "image_format",
    "payload_magic",
}
# Lists of node ids, compared as sets (ComfyUI builds several of them from sets).
ID_LISTS = {"executed", "current_outputs", "nodes", "dependent_outputs", "prompt", "input_config"}
# Lists whose length and order depend on the machine: element types only.
LOOSE_LISTS = {"traceback", "argv"}


# -- shape comparison -------------------------------------------------------------------------


def shape_differences(actual: Any, expected: Any, path: str = "$", key: str = "") -> Iterator[str]:
    """Where `actual` differs from `expected` in structure, types or EXACT_KEYS values."""
    if type(actual) is not type(expected):
        yield f"{path}: {type(actual).__name__} {actual!r:.60} != {type(expected).__name__}"
        return
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            yield f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for name in expected.keys() & actual.keys():
            yield from shape_differences(actual[name], expected[name], f"{path}.{name}", name)
    elif isinstance(expected, list):
        if key in LOOSE_LISTS:
            kinds = {type(v).__name__ for v in actual} | {type(v).__name__ for v in expected}
            if len(kinds) > 1:
                yield f"{path}: element types {kinds}"
        elif key in ID_LISTS and all(isinstance(v, str) for v in expected + actual):
            if sorted(actual) != sorted(expected):
                yield f"{path}: {sorted(actual)} != {sorted(expected)}"
        elif len(actual) != len(expected):
            yield f"{path}: {len(actual)} items != {len(expected)}"
        else:
            for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
                yield from shape_differences(a, e, f"{path}[{index}]", key)
    elif key in EXACT_KEYS and actual != expected:
        yield f"{path}: {actual!r} != {expected!r}"


def assert_same_shape(actual: Any, expected: Any, what: str) -> None:
    problems = list(shape_differences(actual, expected))
    assert not problems, f"{what}:\n  " + "\n  ".join(problems[:15])


def test_shape_comparator_reports_types_keys_and_exact_values() -> None:
    recorded = {"type": "status", "data": {"queue_remaining": 1, "ids": ["2", "1"], "ts": 5}}
    same = {"type": "status", "data": {"queue_remaining": 1, "ids": ["1", "2"], "ts": 9}}
    assert list(shape_differences(same, recorded)) == []
    other = {"type": "status", "data": {"queue_remaining": 2, "ids": ["1"], "ts": 1.5}}
    problems = list(shape_differences(other, recorded))
    assert len(problems) == 3
    assert list(shape_differences({"a": 1}, {"b": 1})) == ["$: keys ['a'] != ['b']"]


# -- transcripts ------------------------------------------------------------------------------


def load_transcript(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = (DATA / "transcripts" / f"{name}.jsonl").read_text().splitlines()
    header, *events = (json.loads(line) for line in lines if line.strip())
    return header, events


def test_data_copy_matches_shared_recordings() -> None:
    if not SHARED.is_dir():
        pytest.skip("the shared recordings are only on the development machine")
    for folder in ("transcripts", "workflows"):
        for original in (SHARED / folder).iterdir():
            copy = DATA / folder / original.name
            assert copy.read_bytes() == original.read_bytes(), copy


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def binary_descriptor(frame: bytes) -> dict[str, Any]:
    """A binary websocket frame described like the transcripts do."""
    event_type, second = struct.unpack(">II", frame[:8])
    described: dict[str, Any] = {"binary": True, "length": len(frame), "event_type": event_type}
    if event_type == 4:
        metadata = json.loads(frame[8 : 8 + second])
        payload = frame[8 + second :]
        described |= {"metadata_length": second, "metadata": metadata}
    else:
        payload = frame[8:]
        described["image_format"] = second
    described["payload_magic"] = payload[:8].hex()
    return described


# -- replay -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    node_times: dict[str, float] = field(default_factory=dict)
    # Request paths whose recorded body depends on what ran before on the recording server.
    unreproducible_bodies: tuple[str, ...] = ()
    input_files: dict[str, bytes] = field(default_factory=dict)
    warm_up_with_first_prompt: bool = False
    # The recording server stalled (quirk 2) while the next request came in, so the order in
    # which `status` counts went up and down cannot be reproduced; only their number can.
    status_order_is_timing: bool = False


SLOW_BLUR = {"ImageBlur": 0.4}
CORRUPT = b"this is not an image, just text!!\n"
SCENARIOS = [
    Scenario(
        "00_misc_endpoints",
        input_files={
            "corrupt.png": CORRUPT,
            "test_input_ddf55c.png": png_bytes((1, 2, 3)),
            "test_input_ddf55c (1).png": png_bytes((4, 5, 6)),
        },
    ),
    Scenario("01_success"),
    Scenario("02_cached_rerun", warm_up_with_first_prompt=True),
    Scenario("03_validation_errors"),
    Scenario("04_execution_error"),
    Scenario("05_interrupt", node_times=SLOW_BLUR),
    Scenario("06_two_prompts_queued", node_times=SLOW_BLUR),
    Scenario(
        "07_queue_delete_and_priority",
        node_times={"ImageBlur": 0.6},
        unreproducible_bodies=("/history?max_items=2&offset=0",),
        status_order_is_timing=True,
    ),
    Scenario("08_upload_and_loadimage"),
    Scenario("09_no_client_id", input_files={"corrupt.png": CORRUPT}),
    Scenario("09b_no_client_id_interrupt", node_times=SLOW_BLUR),
    Scenario("10_websocket_images"),
    Scenario("11_ws_reconnect_and_ids", node_times={"ImageBlur": 0.6}),
    Scenario("13_duplicate_clientid_close_race"),
    Scenario("14_filecleaner_custom_node"),
    Scenario("15_saveimage_naming_and_partial"),
    Scenario("16_client_prompt_id_reuse", node_times=SLOW_BLUR),
]


@dataclass
class Client:
    label: str
    ws: aiohttp.ClientWebSocketResponse
    received: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


class Replayer:
    """Sends a transcript's requests to the emulator, collecting what every client receives."""

    def __init__(self, url: str, emulator: Any, scenario: Scenario, events: list[Any]) -> None:
        self.url = url
        self.emulator = emulator
        self.scenario = scenario
        self.events = events
        self.session = aiohttp.ClientSession()
        self.clients: dict[str, Client] = {}
        self.finished: list[Client] = []
        self.ids: dict[str, str] = {}  # recorded -> actual (prompt ids, file names)
        self.timeout = 10.0

    async def run(self) -> None:
        try:
            for index, event in enumerate(self.events):
                await self.wait_for_recorded_messages(event, index)
                await self.handle(event, index)
            await self.wait_for_recorded_messages(None, len(self.events))
            await asyncio.sleep(0.2)  # anything unexpected would arrive now
        finally:
            for client in list(self.clients.values()):
                await self.close(client)
            await self.session.close()

    async def wait_for_recorded_messages(self, event: Any, index: int) -> None:
        """Hold the next action until every client saw what its recorded twin had seen."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        for label, client in self.clients.items():
            wanted = len(self.recorded_messages_for_client(label, index))
            while len(client.received) < wanted:
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(
                        f"{label} got {len(client.received)} of {wanted} messages before "
                        f"event {index} ({event}); got {[m.get('type') for m in client.received]}"
                    )
                await asyncio.sleep(0.005)

    def recorded_messages_for_client(self, label: str, before: int) -> list[Any]:
        """Messages of this client connection (since its ws_open) before event `before`."""
        opened = max(
            (
                i
                for i, e in enumerate(self.events[:before])
                if e.get("kind") == "ws_open" and e["client"] == label
            ),
            default=0,
        )
        return [
            e
            for e in self.events[opened:before]
            if e.get("kind") == "ws" and e.get("client") == label
        ]

    async def handle(self, event: dict[str, Any], index: int) -> None:
        kind = event.get("kind")
        if kind == "ws_open":
            await self.open(event["client"], event["url"])
        elif kind == "ws_send":
            message = event["msg"]
            text = message if isinstance(message, str) else json.dumps(message)
            await self.clients[event["client"]].ws.send_str(text)
        elif kind == "ws_closed" and event.get("close_code") is None:
            await self.close(self.clients[event["client"]])
            await asyncio.sleep(0.05)  # let the server run its cleanup for that socket
        elif kind == "note":
            self.apply_note(event["text"])
        elif kind == "http" and not self.superseded(index):
            await self.request(event)

    def apply_note(self, text: str) -> None:
        """Notes record out-of-band actions of the recording session, e.g. deleting files."""
        deleted = re.match(r"deleted (\S+) ", text)
        if deleted:
            (self.emulator.output_dir / deleted.group(1)).unlink()

    def superseded(self, index: int) -> bool:
        """Polls (the same GET again and again) are replayed once, as their last instance."""
        request = self.events[index]["request"]
        later = [e for e in self.events[index + 1 :] if e.get("kind") == "http"]
        return bool(later) and request["method"] == "GET" and later[0]["request"] == request

    async def open(self, label: str, recorded_url: str) -> None:
        url = re.sub(r"^ws://[^/]+", self.url.replace("http", "ws"), recorded_url)
        ws = await self.session.ws_connect(url, autoping=True)
        client = Client(label, ws)
        client.reader = asyncio.create_task(self.read(client))
        self.clients[label] = client

    async def read(self, client: Client) -> None:
        async for message in client.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                client.received.append(json.loads(message.data))
            elif message.type == aiohttp.WSMsgType.BINARY:
                client.received.append(binary_descriptor(message.data))

    async def close(self, client: Client) -> None:
        await client.ws.close()
        if client.reader is not None:
            await client.reader
        self.finished.append(client)
        del self.clients[client.label]

    def substitute(self, value: Any) -> Any:
        if isinstance(value, str):
            for recorded, actual in self.ids.items():
                value = value.replace(recorded, actual)
            return value
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    def normalise(self, value: Any) -> Any:
        """Map the emulator's ids and file names back to the recorded ones."""
        if isinstance(value, str):
            for recorded, actual in self.ids.items():
                value = value.replace(actual, recorded)
            return value
        if isinstance(value, list):
            return [self.normalise(v) for v in value]
        if isinstance(value, dict):
            return {self.normalise(k): self.normalise(v) for k, v in value.items()}
        return value

    def learn_ids(self, actual: Any, expected: Any) -> None:
        """Pair up prompt ids and file names the emulator chose differently."""
        if isinstance(actual, dict) and isinstance(expected, dict):
            if expected and all(isinstance(v, dict) and "prompt" in v for v in expected.values()):
                for recorded_id, actual_id in zip(expected, actual, strict=False):
                    if recorded_id != actual_id:
                        self.ids.setdefault(recorded_id, actual_id)
                    self.learn_ids(actual[actual_id], expected[recorded_id])
                return
            for key in expected.keys() & actual.keys():
                if key in ("prompt_id", "filename") and isinstance(expected[key], str):
                    if expected[key] != actual[key]:
                        self.ids.setdefault(expected[key], actual[key])
                else:
                    self.learn_ids(actual[key], expected[key])
        elif isinstance(actual, list) and isinstance(expected, list):
            for a, e in zip(actual, expected, strict=False):
                self.learn_ids(a, e)

    async def request(self, event: dict[str, Any]) -> None:
        recorded, expected = event["request"], event["response"]
        path = self.substitute(recorded["path"])
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            problems = await self.send_and_compare(recorded, path, expected)
            if not problems or recorded["method"] != "GET":
                break
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)  # a poll: the state may not be there yet
        assert not problems, f"{recorded['method']} {recorded['path']}:\n  " + "\n  ".join(
            problems[:15]
        )

    async def send_and_compare(
        self, recorded: dict[str, Any], path: str, expected: dict[str, Any]
    ) -> list[str]:
        kwargs: dict[str, Any] = {}
        if "json" in recorded:
            kwargs["json"] = self.substitute(recorded["json"])
        elif "raw_body" in recorded:
            kwargs["data"] = recorded["raw_body"]
        elif "multipart_fields" in recorded:
            kwargs["data"] = self.form(recorded)
        async with self.session.request(recorded["method"], self.url + path, **kwargs) as reply:
            body = await reply.read()
            headers = reply.headers
            status = reply.status
        problems = [] if status == expected["status"] else [f"status {status}"]
        for name in ("Content-Type", "Content-Disposition"):
            if name in expected["headers"]:
                got = self.normalise(headers.get(name))
                if got != expected["headers"][name]:
                    problems.append(f"{name}: {got!r} != {expected['headers'][name]!r}")
        if recorded["path"] in self.scenario.unreproducible_bodies or problems:
            return problems
        if "body" in expected:
            actual = json.loads(body)
            self.learn_ids(actual, expected["body"])
            problems += shape_differences(self.normalise(actual), expected["body"])
        elif "body_text" in expected:
            if body.decode() != expected["body_text"]:
                problems.append(f"body {body!r}")
        elif expected.get("body_length") == 0:
            if body:
                problems.append(f"body should be empty, got {body[:40]!r}")
        else:
            magic = expected["body_magic"]
            if not body.hex().startswith(magic[:8]) or not body:
                problems.append(f"body starts {body[:8].hex()} != {magic}")
        return problems

    def form(self, recorded: dict[str, Any]) -> aiohttp.FormData:
        form = aiohttp.FormData()
        note = recorded.get("note", "")
        for name, value in recorded["multipart_fields"].items():
            if isinstance(value, dict):
                if value["filename"] == "corrupt.png":
                    content = CORRUPT
                else:
                    content = png_bytes((9, 9, 9) if "different bytes" in note else (7, 7, 7))
                form.add_field(
                    name, content, filename=value["filename"], content_type=value["content_type"]
                )
            else:
                form.add_field(name, value)
        return form

    def compare_messages(self) -> None:
        received: dict[str, list[list[Any]]] = {}
        for client in self.finished:
            received.setdefault(client.label, []).append(client.received)
        labels = {e["client"] for e in self.events if e.get("kind") == "ws_open"}
        for label in sorted(labels):
            self.compare_client(label, [m for run in received.get(label, []) for m in run])

    def compare_client(self, label: str, actual: list[Any]) -> None:
        recorded = [
            e["msg"] if "msg" in e else {k: v for k, v in e.items() if k not in ("t", "kind")}
            for e in self.events
            if e.get("kind") == "ws" and e["client"] == label
        ]
        for entry in recorded:
            entry.pop("client", None)
        actual = self.normalise(actual)

        def kind(message: dict[str, Any]) -> str:
            return "binary" if message.get("binary") else message["type"]

        def split(messages: list[Any]) -> tuple[list[Any], list[Any]]:
            statuses = [m for m in messages if kind(m) == "status"]
            return statuses, [m for m in messages if kind(m) != "status"]

        actual_status, actual_events = split(actual)
        recorded_status, recorded_events = split(recorded)
        # `status` is broadcast from the HTTP side and may interleave differently; it is
        # compared as its own sequence, the other messages in strict order.
        assert [kind(m) for m in actual_events] == [kind(m) for m in recorded_events], (
            f"{label}:\n{_summary(actual_events)}\n!=\n{_summary(recorded_events)}"
        )
        counts = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in actual_status]
        recorded_counts = [
            m["data"]["status"]["exec_info"]["queue_remaining"] for m in recorded_status
        ]
        if self.scenario.status_order_is_timing:
            assert len(counts) == len(recorded_counts), f"{label} {counts} != {recorded_counts}"
            actual_status, recorded_status = [], []
        else:
            assert counts == recorded_counts, f"{label} status {counts} != {recorded_counts}"
        for got, want in zip(
            actual_events + actual_status, recorded_events + recorded_status, strict=True
        ):
            assert_same_shape(got, want, f"{label} {kind(want)}")
        for before, after in itertools.pairwise(recorded):
            if kind(after) == "executing" and after["data"]["node"] is None:
                assert kind(before) == "status"
                index = next(
                    i
                    for i, m in enumerate(actual)
                    if kind(m) == "executing" and m["data"] == after["data"]
                )
                assert kind(actual[index - 1]) == "status", f"{label}: status before end"


def _summary(messages: list[dict[str, Any]]) -> str:
    return " ".join(
        "binary" if m.get("binary") else f"{m['type']}:{m['data'].get('node', '')}"
        for m in messages
    )


async def warm_up(url: str, events: list[dict[str, Any]]) -> None:
    """Run the transcript's first prompt once, so that it is cached as on the recording server."""
    first = next(e for e in events if e.get("kind") == "http" and e["request"]["path"] == "/prompt")
    async with aiohttp.ClientSession() as session:
        body = {"prompt": first["request"]["json"]["prompt"]}
        async with session.post(url + "/prompt", json=body) as reply:
            prompt_id = (await reply.json())["prompt_id"]
        for _ in range(500):
            async with session.get(f"{url}/history/{prompt_id}") as reply:
                if await reply.json():
                    return
            await asyncio.sleep(0.01)
    pytest.fail("warm-up prompt did not finish")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_transcript_replay_matches_recording(
    scenario: Scenario, comfyui_emulator_factory: Callable[..., Any]
) -> None:
    emulator = comfyui_emulator_factory(node_times=scenario.node_times)
    for name, content in scenario.input_files.items():
        (emulator.input_dir / name).write_bytes(content)
    _, events = load_transcript(scenario.name)
    if scenario.warm_up_with_first_prompt:
        await warm_up(emulator.url, events)
    replayer = Replayer(emulator.url, emulator, scenario, events)
    await replayer.run()
    replayer.compare_messages()
