"""`python -m bench.emulators --count N`: N ComfyUI emulators on one event loop, in this
process, until SIGTERM. Their addresses go to `--ready-file` (JSON) once all listen."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from comfyui_server.core.testing.emulator import ComfyUIEmulator


async def serve(args: argparse.Namespace) -> None:
    base = Path(args.base_dir)
    emulators = [
        ComfyUIEmulator(base_dir=base / f"emu{i}", node_time=args.node_time)
        for i in range(args.count)
    ]
    for emulator in emulators:
        await emulator.start()
        if args.hang:
            emulator.hang(True)
    info = {
        "addresses": [e.address for e in emulators],
        "base_dirs": [str(e.base_dir) for e in emulators],
    }
    ready = Path(args.ready_file)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(ready)  # atomic: the parent never reads half a file
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for emulator in emulators:
        await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emulators")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--node-time", type=float, default=0.0)
    parser.add_argument("--base-dir", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--hang", action="store_true", help="prompts queue and never run")
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
