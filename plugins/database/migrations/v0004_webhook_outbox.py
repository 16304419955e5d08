"""The webhook outbox: each delivery of an event to a task's callback URL is a row, written
before the first attempt, so a restart resumes it; `owner`/`lease_until` hold it while one
process sends an attempt. Tasks keep the extra events their request asked for."""

DESCRIPTION = "create comfyui_webhook_delivery; add comfyui_task.callback_events"

SQL = {
    "postgres": [
        "ALTER TABLE comfyui_task ADD COLUMN callback_events JSONB NOT NULL DEFAULT '[]'",
        """
        CREATE TABLE comfyui_webhook_delivery (
            id TEXT PRIMARY KEY,
            task_id BIGINT NOT NULL REFERENCES comfyui_task (id) ON DELETE CASCADE,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            body BYTEA NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            next_attempt_at TIMESTAMPTZ,
            expires_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            owner TEXT,
            lease_until TIMESTAMPTZ
        )
        """,
        "CREATE INDEX comfyui_webhook_delivery_task_idx"
        " ON comfyui_webhook_delivery (task_id, created_at)",
        "CREATE INDEX comfyui_webhook_delivery_due_idx"
        " ON comfyui_webhook_delivery (next_attempt_at) WHERE status = 'pending'",
    ],
    "sqlite": [
        "ALTER TABLE comfyui_task ADD COLUMN callback_events TEXT NOT NULL DEFAULT '[]'",
        """
        CREATE TABLE comfyui_webhook_delivery (
            id TEXT PRIMARY KEY,
            task_id INTEGER NOT NULL REFERENCES comfyui_task (id) ON DELETE CASCADE,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            body BLOB NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            created_at TEXT NOT NULL,
            next_attempt_at TEXT,
            expires_at TEXT NOT NULL,
            finished_at TEXT,
            owner TEXT,
            lease_until TEXT
        )
        """,
        "CREATE INDEX comfyui_webhook_delivery_task_idx"
        " ON comfyui_webhook_delivery (task_id, created_at)",
        "CREATE INDEX comfyui_webhook_delivery_due_idx"
        " ON comfyui_webhook_delivery (next_attempt_at) WHERE status = 'pending'",
    ],
}
