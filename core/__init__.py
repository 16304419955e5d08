"""comfyui-server's core: what plugins import.

    from comfyui_server.core import hookimpl, Workflow

Everything a plugin needs is re-exported here; the rest of core is internal.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("comfyui-server")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from .comfyui.client import ComfyUIClient, PromptRejected
from .config import Settings, load_settings
from .errors import ConfigError, ErrorCode, RequestError, StartupError
from .hookspecs import hookimpl
from .memory_store import MemoryTaskStore
from .models import (
    Artifact,
    EndpointState,
    OutputRef,
    SizedStream,
    StoredOutput,
    Task,
    TaskEvent,
    TaskResult,
)
from .records import TaskRecord, render_task
from .store import DuplicateClientTaskId, TaskStore
from .workflows import Workflow

__all__ = [
    "Artifact",
    "ComfyUIClient",
    "ConfigError",
    "DuplicateClientTaskId",
    "EndpointState",
    "ErrorCode",
    "MemoryTaskStore",
    "OutputRef",
    "PromptRejected",
    "RequestError",
    "Settings",
    "SizedStream",
    "StartupError",
    "StoredOutput",
    "Task",
    "TaskEvent",
    "TaskRecord",
    "TaskResult",
    "TaskStore",
    "Workflow",
    "__version__",
    "hookimpl",
    "load_settings",
    "render_task",
]
