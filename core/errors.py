"""Error codes (a stable, documented table) and the exceptions that carry them.

The seed's codes keep their numbers: 0 success, 1 queue prompt error, 2 S3 upload error,
3 retrieve image error, 10 unknown. New codes only ever get new numbers.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    SUCCESS = 0
    QUEUE_PROMPT_ERROR = 1
    """ComfyUI refused the prompt (HTTP 400 from POST /prompt: validation failed)."""
    S3_UPLOAD_ERROR = 2
    """An output could not be stored; it was written to the fallback folder instead."""
    RETRIEVE_IMAGE_ERROR = 3
    """An output listed in ComfyUI's history could not be downloaded from /view."""
    EXECUTION_ERROR = 4
    """ComfyUI ran the prompt and a node failed (execution_error)."""
    INTERRUPTED = 5
    """ComfyUI reported execution_interrupted that we did not ask for."""
    ENDPOINT_LOST = 6
    """The endpoint died with the task and the task ran out of attempts."""
    INPUT_UPLOAD_ERROR = 7
    """An input file could not be uploaded to the endpoint."""
    BUILD_PROMPT_ERROR = 8
    """No plugin could build a prompt, or a build_prompt implementation raised."""
    CANCELLED = 9
    """The client cancelled the task."""
    UNKNOWN = 10
    TIMEOUT = 11
    """The task's deadline passed."""
    NO_OUTPUTS = 12
    """The prompt finished but produced no output file."""
    NO_CAPABLE_ENDPOINT = 13
    """No endpoint offers every node class the workflow uses."""


class ComfyServerError(Exception):
    """Base of our own exceptions."""


class ConfigError(ComfyServerError):
    """Bad configuration; the message names the variable."""


class PluginValidationError(ComfyServerError):
    """A plugin is broken or two plugins conflict; the message names them."""


class StartupError(ComfyServerError):
    """A plugin cannot start (for example a setting it needs is wrong)."""


class RequestError(ComfyServerError):
    """A client's request is wrong. `field` names the offending field."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status_code: int = 400,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status_code = status_code
        self.retry_after = retry_after
        """Seconds, sent as a Retry-After header (429, 503)."""


class TaskFailure(ComfyServerError):
    """Ends a task as failed with a code; raised inside the engine."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EndpointUnavailable(ComfyServerError):
    """The endpoint cannot be reached; the task may be retried elsewhere."""
