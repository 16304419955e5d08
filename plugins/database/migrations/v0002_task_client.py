"""Tasks remember which API key created them, so a key sees only its own tasks."""

DESCRIPTION = "add comfyui_task.client (the API key's name)"

SQL = {
    "postgres": ["ALTER TABLE comfyui_task ADD COLUMN client TEXT"],
    "sqlite": ["ALTER TABLE comfyui_task ADD COLUMN client TEXT"],
}
