"""Profiling the server subprocess with py-spy (installed from PyPI on demand), and a summary
of its collapsed stacks: where the time goes, by self and by inclusive samples.

`python -m bench.profile FILE` prints the summary of a py-spy `--format raw` file.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Recorder:
    """`py-spy record` attached to `pid` until `stop()`; writes collapsed stacks to `out`."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.out = out
        self.popen = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path:
        self.popen.send_signal(signal.SIGINT)
        self.popen.wait(30)
        return self.out


def _short(frame: str, keep_line: bool) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{match['line']}" if keep_line and match["line"] else ""
    return f"{match['func']} ({path}{line})"


OWN_CODE = ("core/", "plugins/", "workflows/")
"""Frames of comfyui-server itself (paths relative to the repository)."""

LAYERS = (
    (
        "HTTP client (httpx, httpcore, h11, anyio, our network layer)",
        ("httpx/", "httpcore/", "h11/", "anyio/", "core/http_transport.py"),
    ),
    (
        "database driver (sqlite3 and its thread, asyncpg)",
        ("asyncpg/", "sqlite3/", "plugins/database/sqlite_thread.py"),
    ),
    ("HTTP server (uvicorn, litestar)", ("uvicorn/protocols/", "litestar/", "httptools")),
    ("websocket client (websockets)", ("websockets/",)),
    ("hooks (pluggy)", ("pluggy/",)),
    ("logging", ("logging/",)),
)
"""Where a sample's time goes: the innermost frame that belongs to one of these libraries,
else comfyui-server's own code, else the event loop and the rest of the standard library."""


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame.rsplit("(", 1)[-1]
        for layer, markers in LAYERS:
            if any(marker in where for marker in markers):
                return layer
        where = _short(frame, keep_line=False).split("(", 1)[-1]
        if where.startswith(OWN_CODE) and not where.startswith("core/cli.py"):
            return "comfyui-server's own code"  # cli.py only starts the loop that runs it all
    return "event loop and standard library"


def summarise(path: Path, top: int = 20) -> str:
    """Self time by line, and inclusive time by function of comfyui-server's own code."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1], keep_line=True)] += n
        layers[_layer(frames)] += n
        for name in {_short(f, keep_line=False) for f in frames}:
            if name.split("(", 1)[-1].startswith(OWN_CODE):
                inclusive[name] += n
    lines = [f"{total} samples", "", "by layer (innermost frame):"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in layers.most_common()]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive, comfyui-server's own functions:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20))
