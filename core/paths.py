"""Names that come from ComfyUI become paths and keys of ours; none may escape its place."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_relative_path(*parts: str) -> str:
    """Join path parts into a relative POSIX path with no `..`, no root, no drive, no
    control characters. `("../../x", "/abs/y.png")` gives `x/abs/y.png`."""
    pieces = []
    for part in parts:
        for piece in re.split(r"[\\/]+", _UNSAFE.sub("", part or "")):
            piece = piece.strip()
            if piece in ("", ".", "..") or (len(piece) == 2 and piece[1] == ":"):
                continue
            pieces.append(piece)
    return "/".join(pieces) or "output"
