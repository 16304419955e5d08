"""What one clean-up attempt shares between the runner and the two strategies: the
exception that asks for a later attempt, the record of what the attempt did before it was
cut short, and the endpoint calls both strategies make (its client, whether it is up, the
removal of its history entries)."""

from __future__ import annotations

from typing import Any

from comfyui_server.core import ComfyUIClient
from comfyui_server.core.models import Chore


class Retry(Exception):
    """The attempt did not finish the clean-up; a later one may."""


class Progress:
    """What an attempt did so far, kept when it is cut short (its timeout)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        """Clean-up prompts it sent or found, in order."""
        self.waiting: dict[str, Any] | None = None
        """The prompt it waits for (`prompt_id`) and the files that prompt removes."""


def client_for(engine: Any, endpoint: str) -> ComfyUIClient:
    client = engine.client(endpoint)
    if client is None:
        raise Retry(f"endpoint {endpoint} is not configured")
    return client


def endpoint_state(engine: Any, endpoint: str) -> Any:
    """The endpoint's state in the fleet (None if the fleet does not list it); Retry when
    it is down."""
    state = next((s for s in engine.fleet.states() if s.name == endpoint), None)
    if state is not None and state.status == "down":
        raise Retry(f"endpoint {endpoint} is down")
    return state


async def delete_history(client: ComfyUIClient, chore: Chore, progress: Progress) -> None:
    """Delete the history entries of the task's prompt and of every clean-up prompt."""
    prompt_id = chore.data.get("prompt_id")
    ids = [*([prompt_id] if prompt_id else []), *chore.data.get("prompts", [])]
    ids = list(dict.fromkeys([*ids, *progress.prompts]))
    if ids:
        await client.delete_history(ids)
