"""Processes, ports, memory readings and scratch databases for the benchmarks.

The server and the emulators each run in a process of their own (`comfyui-server serve`,
`python -m bench.emulators`), so the load generator in the bench process, the emulators and
the server never share a GIL, as in a real deployment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
SERVER_CMD = [str(VENV_BIN / "comfyui-server"), "serve"]
POSTGRES_ADMIN_DSN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- memory, from /proc ---------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest RSS since start or since `reset_peak_rss`."""
    return _status_kb(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat:
    how close every process together (server, emulators, load generator, PostgreSQL) came
    to using the machine up."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---- processes ------------------------------------------------------------------------------


_LIVE: set[Process] = set()


def stop_all() -> None:
    """Stop every child still running (on an error or a signal to the bench)."""
    for process in list(_LIVE):
        process.stop()


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        _LIVE.discard(self)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


class Emulators(Process):
    """`count` ComfyUI emulators on one event loop in one child process."""

    def __init__(
        self,
        log_dir: Path,
        base_dir: Path,
        count: int = 1,
        node_time: float = 0.0,
        hang: bool = False,
        name: str = "emulators",
    ) -> None:
        self.ready_file = log_dir / f"{name}.ready.json"
        self.ready_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "bench.emulators",
            "--count",
            str(count),
            "--node-time",
            str(node_time),
            "--base-dir",
            str(base_dir),
            "--ready-file",
            str(self.ready_file),
        ] + (["--hang"] if hang else [])
        super().__init__(name, argv, {}, log_dir)
        deadline = time.monotonic() + 30
        while not self.ready_file.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start")
            time.sleep(0.02)
        info = json.loads(self.ready_file.read_text())
        self.addresses: list[str] = info["addresses"]
        self.base_dirs: list[Path] = [Path(p) for p in info["base_dirs"]]

    def url(self, index: int = 0) -> str:
        return f"http://{self.addresses[index]}"


class Server(Process):
    """`comfyui-server serve` with `env` on a free port, under DATA_DIR `data_dir`."""

    def __init__(
        self,
        log_dir: Path,
        data_dir: Path,
        endpoints: list[str],
        env: Mapping[str, str] = (),
        name: str = "server",
        wait_up: bool = True,
        argv_prefix: list[str] = (),
    ) -> None:
        self.port = free_port()
        full_env = {
            "COMFYUI_ENDPOINTS": ",".join(endpoints),
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "URL_ALLOWLIST": "127.0.0.1",
            "COMFYUI_CLEANUP": "off",
            **dict(env),
        }
        super().__init__(name, [*argv_prefix, *SERVER_CMD], full_env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api/v1"
        self._wait(wait_up)

    def _wait(self, wait_up: bool, timeout: float = 60) -> None:
        """Until it answers; with `wait_up`, until every endpoint is up too."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as http:
            while True:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    endpoints = http.get(self.api + "/endpoints").json()
                    if not wait_up or all(e["status"] == "up" for e in endpoints):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready; see {self.log_path}")
                time.sleep(0.05)


@contextlib.asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one run; dropped afterwards. Yields its URL."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN + "/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_DSN}/{name}"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = _status_kb_meminfo()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(  # the report it is about to overwrite does not count
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks.md"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    if dirty:
        commit += f" + uncommitted changes in {len(dirty)} file(s)"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "postgres": _postgres_version(),
    }


def _status_kb_meminfo() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"^MemTotal:\s+(\d+) kB", text, re.M).group(1))


def _postgres_version() -> str:
    psql = shutil.which("psql")
    if not psql:
        return "unknown"
    out = subprocess.run(
        [psql, "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"
