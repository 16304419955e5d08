"""`python -m bench`: run the cases of issue #9 and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .harness import machine, stop_all
from .report import CaseResult, Context, Row, render, write

CASES = {
    "a": "overhead",
    "b": "throughput",
    "c": "submission",
    "d": "utilisation",
    "e": "memory",
    "f": "large_output",
    "g": "http_client",
}

PREAMBLE = """
Every figure stands next to its floor, measured in the same run: the same work sent
straight to the ComfyUI emulator (POST /prompt, then `executing` with `node: null` on its
websocket), with no comfyui-server in between. The server runs as its own process
(`comfyui-server serve`), the emulators in others (`python -m bench.emulators`), and the load
generator and webhook receiver in the bench process, so none of them shares the server's
GIL. All of them share the machine's cores, as they would on one host. Timings are never
used by the test suite; a missed target is reported here, not failed.

On a 2-core machine shared by all these processes, figures move by 10-30 % from one run to
the next; compare runs, not digits. `--profile` (`nox -s bench -- --profile`) records the
server with py-spy during case b and adds its hotspots below; `--quick` is a smaller run;
`--tiny` is the test suite's smoke run (tests/test_bench_smoke.py: every case runs, figures
mean nothing); `--cases a,c` runs a subset.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES)
    )
    parser.add_argument("--out", default="docs/benchmarks.md", help="the report to write")
    parser.add_argument("--quick", action="store_true", help="fewer tasks per case")
    parser.add_argument(
        "--tiny", action="store_true", help="each case at a tiny size (the tests' smoke run)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the server with py-spy during case b and add the hotspots to the report",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    return parser.parse_args(argv)


async def run_case(key: str, ctx: Context) -> CaseResult:
    module = importlib.import_module(f"bench.cases.{CASES[key]}")
    started = time.monotonic()
    try:
        result = await module.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        result = CaseResult(key, CASES[key].replace("_", " "))
        result.rows.append(Row("(case failed)", f"{type(exc).__name__}: {exc}"[:200]))
    result.seconds = time.monotonic() - started
    print(f"case {key}: {result.seconds:.0f} s", file=sys.stderr)
    for row in result.rows:
        print(f"  {row.metric}: {row.value} | floor {row.floor} | {row.target}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        sys.exit(f"unknown case(s): {', '.join(unknown)}")
    info = machine()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    print(f"scratch folder and logs: {tmp}", file=sys.stderr)
    ctx = Context(tmp=tmp, logs=logs, quick=args.quick, tiny=args.tiny, profile=args.profile)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        runner = asyncio.run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    try:
        results = [runner(run_case(key, ctx)) for key in keys]
    finally:
        stop_all()
    command = shlex.join(["python", "-m", "bench", *argv])
    text = render(results, info, command, time.monotonic() - started, PREAMBLE)
    write(Path(args.out), text)
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
