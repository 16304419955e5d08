"""The task engine and the fleet of ComfyUI endpoints it drives."""

from .engine import Engine
from .fleet import Fleet

__all__ = ["Engine", "Fleet"]
