"""Which database the settings pick, and the variable named when one is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_server.core import ConfigError, Settings
from comfyui_server.core.plugins import create_plugin_manager
from comfyui_server.plugins.database import PostgresTaskStore, SQLiteTaskStore
from comfyui_server.plugins.database.settings import resolve_target

RDB = {
    "RDB_USERNAME": "comfy user",
    "RDB_PASSWORD": "p@ss:w/rd",
    "RDB_HOST": "db.internal",
    "RDB_PORT": "6543",
    "RDB_NAME": "tasks",
}


def target(**env: str):
    return resolve_target(Settings(env=env, data_dir=env.pop("DATA_DIR", "./data")))


def test_default_is_sqlite_in_the_data_dir(tmp_path):
    chosen = target(DATA_DIR=str(tmp_path / "data"))
    assert chosen.backend == "sqlite"
    assert chosen.location == str(tmp_path / "data" / "comfyui-server.sqlite3")
    assert chosen.auto_migrate and chosen.pool_size == 10 and chosen.claim_lease == 60


def test_seed_rdb_variables_make_a_postgres_dsn():
    chosen = target(**RDB)
    assert chosen.backend == "postgres"
    assert chosen.location == "postgresql://comfy%20user:p%40ss%3Aw%2Frd@db.internal:6543/tasks"
    assert "p%40ss" not in chosen.display and "db.internal:6543/tasks" in chosen.display


def test_rdb_port_defaults_to_5432_and_password_is_optional():
    chosen = target(RDB_HOST="::1", RDB_NAME="tasks", RDB_USERNAME="postgres")
    assert chosen.location == "postgresql://postgres@[::1]:5432/tasks"


def test_database_url_wins_over_rdb():
    chosen = target(DATABASE_URL="postgresql://u:secret@h:5433/d", **RDB)
    assert chosen.location == "postgresql://u:secret@h:5433/d"
    assert chosen.display == "postgresql://u@h:5433/d"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////abs/dir/tasks.sqlite3", "/abs/dir/tasks.sqlite3"),
        ("sqlite:///rel/tasks.sqlite3", str(Path("rel/tasks.sqlite3").resolve())),
        ("postgres://h/d", "postgresql://h/d"),
        ("postgresql+asyncpg://h/d", "postgresql://h/d"),
    ],
)
def test_database_url_forms(url, expected):
    assert target(DATABASE_URL=url).location == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**RDB, "RDB_PORT": "fivefourthreetwo"}, "RDB_PORT"),
        ({**RDB, "RDB_PORT": "70000"}, "RDB_PORT"),
        ({"RDB_USERNAME": "u", "RDB_NAME": "d"}, "RDB_HOST"),
        ({"RDB_HOST": "h"}, "RDB_NAME"),
        ({"DATABASE_URL": "mysql://h/d"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h:port/d"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite://"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///:memory:"}, "DATABASE_URL"),
        ({"DATABASE_URL": "tasks.sqlite3"}, "DATABASE_URL"),
        ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE"),
        ({"DB_AUTO_MIGRATE": "perhaps"}, "DB_AUTO_MIGRATE"),
        ({"DB_CLAIM_LEASE": "-1"}, "DB_CLAIM_LEASE"),
        ({"DB_SQLITE_SYNCHRONOUS": "OFF"}, "DB_SQLITE_SYNCHRONOUS"),
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        target(**env)


def test_options_are_read():
    chosen = target(
        DB_POOL_SIZE="3",
        DB_AUTO_MIGRATE="false",
        DB_CLAIM_LEASE="2.5",
        DB_BUSY_TIMEOUT="5",
        DB_SQLITE_SYNCHRONOUS="FULL",
    )
    assert (chosen.pool_size, chosen.auto_migrate, chosen.claim_lease) == (3, False, 2.5)
    assert (chosen.busy_timeout, chosen.sqlite_synchronous) == (5, "FULL")


def test_the_task_store_hook_builds_the_configured_store(tmp_path):
    pm = create_plugin_manager()
    sqlite = pm.hook.task_store(settings=Settings(data_dir=str(tmp_path)))
    assert isinstance(sqlite, SQLiteTaskStore) and sqlite.durable
    postgres = pm.hook.task_store(settings=Settings(env=RDB))
    assert isinstance(postgres, PostgresTaskStore)
    with pytest.raises(ConfigError, match="RDB_PORT"):
        pm.hook.task_store(settings=Settings(env={**RDB, "RDB_PORT": "x"}))
