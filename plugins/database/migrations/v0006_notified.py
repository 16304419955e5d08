"""A task records when its end was announced (on_result and notify ran), so an end saved
just before a crash is announced after it. Tasks that ended before this migration count as
announced."""

DESCRIPTION = "add comfyui_task.notified_at"

SQL = {
    "postgres": [
        "ALTER TABLE comfyui_task ADD COLUMN notified_at TIMESTAMPTZ",
        "UPDATE comfyui_task SET notified_at = finished_at WHERE finished_at IS NOT NULL",
        "CREATE INDEX comfyui_task_unnotified_idx ON comfyui_task (finished_at) "
        "WHERE notified_at IS NULL",
    ],
    "sqlite": [
        "ALTER TABLE comfyui_task ADD COLUMN notified_at TEXT",
        "UPDATE comfyui_task SET notified_at = finished_at WHERE finished_at IS NOT NULL",
        "CREATE INDEX comfyui_task_unnotified_idx ON comfyui_task (finished_at) "
        "WHERE notified_at IS NULL",
    ],
}
