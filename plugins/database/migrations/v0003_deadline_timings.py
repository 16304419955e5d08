"""Tasks keep their deadline (so a restart re-arms it) and the time spent in each stage."""

DESCRIPTION = "add comfyui_task.deadline and comfyui_task.timings"

SQL = {
    "postgres": [
        "ALTER TABLE comfyui_task ADD COLUMN deadline TIMESTAMPTZ",
        "ALTER TABLE comfyui_task ADD COLUMN timings JSONB NOT NULL DEFAULT '{}'",
        "CREATE INDEX comfyui_task_workflow_id_idx ON comfyui_task (workflow, id)",
    ],
    "sqlite": [
        "ALTER TABLE comfyui_task ADD COLUMN deadline TEXT",
        "ALTER TABLE comfyui_task ADD COLUMN timings TEXT NOT NULL DEFAULT '{}'",
        "CREATE INDEX comfyui_task_workflow_id_idx ON comfyui_task (workflow, id)",
    ],
}
