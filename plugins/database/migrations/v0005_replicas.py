"""Replicas announce themselves, so the tasks of one that died are adopted by the others
(and only those: a live replica keeps its own)."""

DESCRIPTION = "add comfyui_replica (replica heartbeats)"

SQL = {
    "postgres": [
        "CREATE TABLE comfyui_replica (owner TEXT PRIMARY KEY, seen_at TIMESTAMPTZ NOT NULL)",
        "CREATE INDEX comfyui_task_owner_idx ON comfyui_task (status, owner)",
    ],
    "sqlite": [
        "CREATE TABLE comfyui_replica (owner TEXT PRIMARY KEY, seen_at TEXT NOT NULL)",
        "CREATE INDEX comfyui_task_owner_idx ON comfyui_task (status, owner)",
    ],
}
