"""Parameter types shared by core's routes and plugins' routes."""

from typing import Annotated

from litestar.params import PathParameter

TaskId = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="The task's id.")]
"""Task ids are 64-bit: a larger number is a 400 naming `task_id`, never a database error."""
