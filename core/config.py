"""Settings from the environment and a `.env` file, under the seed's variable names.

Each setting is a field of a msgspec Struct whose encoded name is the variable's name, so a
bad value fails at start with an error such as "SERVICE_PORT: Expected `int`, got `str`".
Plugins declare their own settings the same way and read them with `load_settings`.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from dotenv import dotenv_values

from .errors import ConfigError

S = TypeVar("S", bound=msgspec.Struct)


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """Core settings. Every field is read from the variable of the same name in capitals."""

    comfyui_endpoints: tuple[str, ...] = ("127.0.0.1:8188",)
    """ComfyUI instances, comma-separated `host:port` or URLs (seed name)."""
    service_host: str = "127.0.0.1"
    """Address the server listens on."""
    service_port: int = 8000
    """Port the server listens on (seed name)."""
    route_prefix: str = "/api/v1"
    """Prefix of every API route (seed name)."""
    public_url: str | None = None
    """Base URL clients use to reach this server (for file links); default from host/port."""
    data_dir: str = "./data"
    """Folder for the embedded defaults: SQLite file, local storage, fallback folder."""
    default_failed_image_path: str | None = None
    """Fallback folder for outputs that could not be stored (seed name);
    default DATA_DIR/failed_images."""
    workflows_dir: str | None = None
    """Folder of drop-in workflows (NAME.json plus optional NAME.toml)."""
    disabled_plugins: tuple[str, ...] = ()
    """Plugins not to load, by name (comma-separated)."""
    max_in_flight_per_endpoint: typing.Annotated[int, msgspec.Meta(ge=1)] = 2
    """Prompts kept in each ComfyUI queue at most; the rest wait in ours."""
    max_attempts: typing.Annotated[int, msgspec.Meta(ge=1)] = 3
    """Dispatch attempts per task before it fails with ENDPOINT_LOST."""
    url_allowlist: tuple[str, ...] = ()
    """Hosts or networks (CIDR) that callback and image URLs may use even though they are
    loopback or private addresses, e.g. `127.0.0.1,10.0.0.0/8`."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest accepted image parameter, decoded."""
    image_fetch_timeout: float = 15.0
    """Seconds to download an image parameter given as a URL."""
    replica_id: str | None = None
    """This replica's name among those sharing one database; default `hostname:SERVICE_PORT`,
    stable across restarts so a restarted replica takes its own tasks back at once."""
    replica_timeout: typing.Annotated[float, msgspec.Meta(ge=2)] = 10.0
    """Seconds without a heartbeat after which a replica counts as dead and the others
    adopt its dispatched and running tasks."""
    api_keys: tuple[str, ...] = ()
    """Client keys, comma-separated `name:secret` (secret of 16+ characters). None set and no
    API_KEYS_FILE: the API is open to anyone who can reach it."""
    admin_api_keys: tuple[str, ...] = ()
    """Admin keys (`name:secret`): may also manage endpoints and see every task."""
    api_keys_file: str | None = None
    """A file of keys, one `name sha256-of-secret [admin]` per line."""
    rate_limit_per_minute: typing.Annotated[int, msgspec.Meta(ge=0)] = 0
    """Requests per minute per key (0: no limit); over it, 429 with Retry-After."""
    max_queue_depth: typing.Annotated[int, msgspec.Meta(ge=0)] = 0
    """Queued tasks beyond which submissions get 503 with Retry-After (0: no cap)."""
    max_body_bytes: typing.Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    """Largest request body; larger ones get 413."""
    log_level: str = "INFO"
    log_format: typing.Literal["text", "json"] = "text"
    """`json` writes one JSON object per log line, with the task id when there is one."""

    env: dict[str, str] = msgspec.field(default_factory=dict, name="__env__")
    """Every variable seen, for plugins that read their own settings."""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def failed_path(self) -> Path:
        return Path(self.default_failed_image_path or self.data_path / "failed_images")

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.service_host in ("0.0.0.0", "::") else self.service_host
        return f"http://{host}:{self.service_port}"

    def load(self, struct_type: type[S]) -> S:
        """A plugin's own settings struct, from the same variables."""
        return load_settings(struct_type, self.env)


def read_environment(env_file: str | os.PathLike | None = ".env") -> dict[str, str]:
    """The `.env` file's values overlaid by the process environment (which wins)."""
    values: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation))
    return origin in (tuple, list, frozenset, set)


def load_settings(struct_type: type[S], env: Mapping[str, str]) -> S:
    """Build `struct_type` from variables; comma-separated values fill sequence fields."""
    info = msgspec.inspect.type_info(struct_type)
    hints = typing.get_type_hints(struct_type, include_extras=True)
    raw: dict[str, Any] = {}
    for field in info.fields:
        if field.encode_name == "__env__":
            raw["__env__"] = dict(env)
            continue
        value = env.get(field.encode_name)
        if value is None:
            continue
        value = value.strip()
        if _is_sequence(hints[field.name]):
            raw[field.encode_name] = [v.strip() for v in value.split(",") if v.strip()]
        elif value == "" and not isinstance(field.default, str):
            continue  # an empty variable means "use the default"
        else:
            raw[field.encode_name] = value
    try:
        return msgspec.convert(raw, struct_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_variable(str(exc))) from None


def _name_variable(message: str) -> str:
    """msgspec says "... - at `$.SERVICE_PORT`"; lead with the variable instead."""
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return f"invalid configuration: {message}"
    return f"{where.rstrip('`').split('[')[0]}: {text}"


def get_settings(env: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    return load_settings(Settings, read_environment(env_file) if env is None else env)
