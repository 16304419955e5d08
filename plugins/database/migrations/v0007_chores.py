"""Chores: plugin work that must get done even across a crash (the `cleanup` plugin removing
a task's files from ComfyUI), one row each, held by one process at a time through
`owner`/`lease_until`, like webhook deliveries."""

DESCRIPTION = "create comfyui_chore"

SQL = {
    "postgres": [
        """
        CREATE TABLE comfyui_chore (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            task_id BIGINT REFERENCES comfyui_task (id) ON DELETE CASCADE,
            data JSONB NOT NULL DEFAULT '{}',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            due_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            owner TEXT,
            lease_until TIMESTAMPTZ
        )
        """,
        "CREATE INDEX comfyui_chore_task_idx ON comfyui_chore (task_id, kind)",
        "CREATE INDEX comfyui_chore_due_idx ON comfyui_chore (kind, due_at)"
        " WHERE finished_at IS NULL",
    ],
    "sqlite": [
        """
        CREATE TABLE comfyui_chore (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            task_id INTEGER REFERENCES comfyui_task (id) ON DELETE CASCADE,
            data TEXT NOT NULL DEFAULT '{}',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TEXT NOT NULL,
            due_at TEXT NOT NULL,
            finished_at TEXT,
            owner TEXT,
            lease_until TEXT
        )
        """,
        "CREATE INDEX comfyui_chore_task_idx ON comfyui_chore (task_id, kind)",
        "CREATE INDEX comfyui_chore_due_idx ON comfyui_chore (kind, due_at)"
        " WHERE finished_at IS NULL",
    ],
}
