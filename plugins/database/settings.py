"""Which database to use, from DATABASE_URL, the seed's RDB_* variables or the embedded
default, checked before anything opens so a typo stops start-up with the variable's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

import msgspec
from comfyui_server.core import ConfigError, Settings

SQLITE_FILENAME = "comfyui-server.sqlite3"
_RDB_VARIABLES = ("RDB_USERNAME", "RDB_PASSWORD", "RDB_HOST", "RDB_NAME")


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    database_url: str | None = None
    """`postgresql://user:pass@host:port/name` or `sqlite:////abs/file.sqlite3`; wins over
    RDB_*. Default: SQLite at DATA_DIR/comfyui-server.sqlite3."""
    rdb_username: str | None = None
    rdb_password: str | None = None
    rdb_host: str | None = None
    rdb_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 5432
    rdb_name: str | None = None
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 10
    """PostgreSQL connections per process; keep pool size x processes under max_connections."""
    db_auto_migrate: bool = True
    """Apply pending migrations when the server starts (else run `comfyui-server db upgrade`)."""
    db_claim_lease: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Seconds after which a claimed task that is still queued may be claimed again (its
    claimer died before dispatching it)."""
    db_busy_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """SQLite: seconds a writer waits for another process's write lock."""
    db_sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite: NORMAL survives a crash of the process (WAL); FULL also survives power loss,
    at one fsync per commit."""


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """The resolved choice: one backend and how to reach it."""

    backend: Literal["sqlite", "postgres"]
    location: str
    """The SQLite file's absolute path, or the PostgreSQL DSN."""
    pool_size: int = 10
    auto_migrate: bool = True
    claim_lease: float = 60.0
    busy_timeout: float = 30.0
    sqlite_synchronous: str = "NORMAL"

    @property
    def display(self) -> str:
        """The location without its password, for logs and CLI output."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.location}"
        parts = urlsplit(self.location)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}@{host}" if user else host).geturl()


def resolve_target(settings: Settings) -> DatabaseTarget:
    own = settings.load(DatabaseSettings)
    options = {
        "pool_size": own.db_pool_size,
        "auto_migrate": own.db_auto_migrate,
        "claim_lease": own.db_claim_lease,
        "busy_timeout": own.db_busy_timeout,
        "sqlite_synchronous": own.db_sqlite_synchronous,
    }
    if own.database_url:
        backend, location = parse_database_url(own.database_url)
        return DatabaseTarget(backend, location, **options)
    if any(getattr(own, name.lower()) for name in _RDB_VARIABLES):
        return DatabaseTarget("postgres", _rdb_dsn(own), **options)
    path = (settings.data_path / SQLITE_FILENAME).resolve()
    return DatabaseTarget("sqlite", str(path), **options)


def parse_database_url(url: str) -> tuple[Literal["sqlite", "postgres"], str]:
    """SQLAlchemy's spelling: `sqlite:///relative.db` and `sqlite:////absolute.db`."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower().split("+")[0]
    if not sep:
        raise ConfigError("DATABASE_URL: expected postgresql://... or sqlite:///PATH")
    if scheme == "sqlite":
        path = rest[1:].partition("?")[0] if rest.startswith("/") else ""
        if not path or path == ":memory:":
            raise ConfigError("DATABASE_URL: sqlite needs a file, e.g. sqlite:////data/db.sqlite3")
        return "sqlite", str(Path(path).resolve())
    if scheme in ("postgresql", "postgres"):
        try:
            urlsplit(url).port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL: {exc}") from None
        return "postgres", f"postgresql://{rest}"
    raise ConfigError(
        f"DATABASE_URL: unsupported scheme {scheme!r}; use postgresql:// or sqlite:///"
    )


def _rdb_dsn(own: DatabaseSettings) -> str:
    for name in ("RDB_HOST", "RDB_NAME"):
        if not getattr(own, name.lower()):
            raise ConfigError(f"{name}: required when any RDB_* variable is set")
    host = own.rdb_host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    userinfo = quote(own.rdb_username or "", safe="")
    if own.rdb_password:
        userinfo += ":" + quote(own.rdb_password, safe="")
    auth = f"{userinfo}@" if userinfo else ""
    return f"postgresql://{auth}{host}:{own.rdb_port}/{quote(own.rdb_name or '', safe='')}"
