"""Clean ComfyUI's disks after each task (the seed's promise): remove the task's uploaded
inputs and its output files from the endpoint, then its history entry.

This module holds the plugin's settings. Its first paragraph repeats the package's because
docs/reference/configuration.md introduces the plugin's variables with it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class CleanupSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    comfyui_cleanup: Literal["filecleaner", "local", "off"] = "filecleaner"
    """How to remove a finished task's files from ComfyUI: `filecleaner` (the
    ComfyUI-fileCleaner node), `local` (ComfyUI's folders are mounted here: see
    COMFYUI_INPUT_DIR) or `off`."""
    comfyui_cleanup_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Seconds one clean-up attempt may take, its prompts on ComfyUI included; one that
    takes longer is tried again later."""
    comfyui_cleanup_retry_window: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds after a task's end during which a failed clean-up is retried; then it is
    given up with a warning and the files stay."""
    comfyui_cleanup_backoff_base: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Delay before the first retry of a clean-up; doubled for each later one."""
    comfyui_cleanup_backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """Longest delay between two clean-up attempts."""
    comfyui_cleanup_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """How often the task store is read for clean-ups that are due, or that a process
    which died left behind (taken once their lease of COMFYUI_CLEANUP_TIMEOUT + 5 s ran
    out)."""
    comfyui_input_dir: str | None = None
    """`local` clean-up: ComfyUI's input folder as mounted on this host. `{host}` and
    `{port}` stand for the endpoint's, for a folder per endpoint
    (e.g. `/mnt/comfyui-{port}/input`); without them one folder serves every endpoint."""
    comfyui_output_dir: str | None = None
    """`local` clean-up: ComfyUI's output folder as mounted on this host; `{host}` and
    `{port}` as in COMFYUI_INPUT_DIR."""
