"""The daemon's ``jobs.toml``: parsed and validated into frozen dataclasses.

Validation is strict and fails on the first problem with a :class:`ConfigError` naming the
dotted key (``queues.critical.concurrency: must be >= 1``), so the daemon can print one
actionable line and exit with status 2. Unknown keys are errors: a typo such as
``pol_interval`` must not silently fall back to a default.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from durable_jobs.engine.errors import DurableJobsError
from durable_jobs.supervisor.pace import DEFAULT_PREFETCH
from durable_jobs.supervisor.pool import MAX_CONCURRENCY

__all__ = [
    "Config",
    "ConfigError",
    "QueueConfig",
    "SupervisorConfig",
    "load_config",
    "parse_config",
]

_APP_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_QUEUE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,254}")
_TOP_KEYS = ("app", "database", "supervisor", "queues")
_DATABASE_KEYS = ("url",)
_QUEUE_KEYS = ("concurrency", "max_jobs_per_actor", "max_memory_mb")
_PAUSE_MODES = ("graceful", "aggressive")


class ConfigError(DurableJobsError):
    """A config value is missing or wrong; ``key`` is the dotted key (or the file path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class QueueConfig:
    """One ``[queues.<name>]`` table: how many actors serve the queue and when to recycle."""

    name: str
    concurrency: int
    max_jobs_per_actor: int | None
    max_memory_mb: int | None


@dataclass(frozen=True)
class SupervisorConfig:
    """The optional ``[supervisor]`` table; times are in seconds."""

    poll_interval: float = 0.5
    heartbeat_interval: float = 1.0
    lease_timeout: float = 30.0
    scheduler: bool = True
    pause_mode: str = "graceful"
    shutdown_timeout: float = 30.0
    prefetch: int = DEFAULT_PREFETCH
    retention: float | None = None


@dataclass(frozen=True)
class Config:
    """A whole validated ``jobs.toml``."""

    app: str
    database_url: str
    supervisor: SupervisorConfig
    queues: tuple[QueueConfig, ...]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the TOML file at ``path``."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(where, "file not found") from None
    except OSError as exc:
        raise ConfigError(where, f"cannot read file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        raise ConfigError(where, f"invalid TOML: not UTF-8 (byte {exc.object[exc.start]:#04x} "
                                 f"at offset {exc.start})") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already parsed TOML document and build a :class:`Config`."""
    _reject_unknown(data, _TOP_KEYS, "")
    return Config(
        app=_parse_app(data),
        database_url=_parse_database_url(data),
        supervisor=_parse_supervisor(data),
        queues=_parse_queues(data),
    )


def _parse_app(data: Mapping[str, Any]) -> str:
    """The required ``app = "package.module:attribute"`` reference."""
    if "app" not in data:
        raise ConfigError("app", "required")
    app = _string(data["app"], "app")
    if not _APP_RE.fullmatch(app):
        raise ConfigError("app", 'must look like "package.module:attribute"')
    return app


def _parse_database_url(data: Mapping[str, Any]) -> str:
    """The required ``[database] url``."""
    table = _table(data.get("database", {}), "database")
    _reject_unknown(table, _DATABASE_KEYS, "database")
    if "url" not in table:
        raise ConfigError("database.url", "required")
    url = _string(table["url"], "database.url")
    if not url:
        raise ConfigError("database.url", "must not be empty")
    if url.split("?", 1)[0] in ("sqlite://", "sqlite:///:memory:"):
        raise ConfigError("database.url", "an in-memory SQLite database is private to the "
                                          "daemon: no producer could reach it; use a file "
                                          "(sqlite:///path/jobs.db)")
    return url


def _parse_supervisor(data: Mapping[str, Any]) -> SupervisorConfig:
    """The optional ``[supervisor]`` table, every key defaulted."""
    table = _table(data.get("supervisor", {}), "supervisor")
    _reject_unknown(table, [f.name for f in fields(SupervisorConfig)], "supervisor")
    d = SupervisorConfig()
    pause_mode = _string(table.get("pause_mode", d.pause_mode), "supervisor.pause_mode")
    if pause_mode not in _PAUSE_MODES:
        raise ConfigError("supervisor.pause_mode", 'must be "graceful" or "aggressive"')
    scheduler = _boolean(table.get("scheduler", d.scheduler), "supervisor.scheduler")
    return SupervisorConfig(
        poll_interval=_float_key(table, "supervisor.poll_interval", d.poll_interval, 0.0),
        heartbeat_interval=_float_key(
            table, "supervisor.heartbeat_interval", d.heartbeat_interval, 0.0
        ),
        lease_timeout=_float_key(table, "supervisor.lease_timeout", d.lease_timeout, 0.0),
        scheduler=scheduler,
        pause_mode=pause_mode,
        shutdown_timeout=_float_key(
            table, "supervisor.shutdown_timeout", d.shutdown_timeout, 0.0, inclusive=True
        ),
        prefetch=_with_default(_int_key(table, "supervisor.prefetch", 0), d.prefetch),
        retention=_float_key(table, "supervisor.retention", 0.0, 0.0)
        if "retention" in table else None,
    )


def _parse_queues(data: Mapping[str, Any]) -> tuple[QueueConfig, ...]:
    """Every ``[queues.<name>]`` table, in file order; at least one is required."""
    queues = _table(data.get("queues", {}), "queues")
    if not queues:
        raise ConfigError("queues", "at least one queue is required")
    return tuple(_parse_queue(name, value) for name, value in queues.items())


def _parse_queue(name: str, value: Any) -> QueueConfig:
    """One ``[queues.<name>]`` table."""
    prefix = f"queues.{_shown(name)}"
    if not isinstance(name, str) or not _QUEUE_NAME_RE.fullmatch(name):
        raise ConfigError(prefix, "invalid queue name")
    table = _table(value, prefix)
    _reject_unknown(table, _QUEUE_KEYS, prefix)
    return QueueConfig(
        name=name,
        concurrency=_with_default(_int_key(table, f"{prefix}.concurrency", 1, MAX_CONCURRENCY), 1),
        max_jobs_per_actor=_int_key(table, f"{prefix}.max_jobs_per_actor", 1),
        max_memory_mb=_int_key(table, f"{prefix}.max_memory_mb", 1),
    )


def _reject_unknown(table: Mapping[str, Any], allowed: Collection[str], prefix: str) -> None:
    """Raise on the first key of ``table`` that is not in ``allowed``."""
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{prefix}.{_shown(name)}" if prefix else _shown(name),
                              "unknown key")


def _shown(key: Any) -> str:
    """A key as the error names it: quoted with escapes (TOML's way) if it holds a
    character that would not show, such as a newline."""
    key = str(key)
    return key if key.isprintable() else json.dumps(key)


def _float_key(
    table: Mapping[str, Any], key: str, default: float, minimum: float, *, inclusive: bool = False
) -> float:
    """An optional number under the last part of ``key``: > ``minimum`` (>= if inclusive)."""
    name = key.rsplit(".", 1)[-1]
    value = _number(table[name], key) if name in table else default
    if inclusive and value < minimum:
        raise ConfigError(key, f"must be >= {minimum:g}")
    if not inclusive and value <= minimum:
        raise ConfigError(key, f"must be > {minimum:g}")
    return value


def _int_key(table: Mapping[str, Any], key: str, minimum: int,
             maximum: int | None = None) -> int | None:
    """An optional integer >= ``minimum`` (and <= ``maximum``) under the last part of
    ``key``; None if absent."""
    name = key.rsplit(".", 1)[-1]
    if name not in table:
        return None
    value = _integer(table[name], key)
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be <= {maximum}")
    return value


def _with_default(value: int | None, default: int) -> int:
    """``value``, or ``default`` when the key was absent."""
    return default if value is None else value


def _type_name(value: Any) -> str:
    """The TOML-ish name of a value's type, for error messages."""
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _table(value: Any, key: str) -> Mapping[str, Any]:
    """``value`` if it is a table."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, got {_type_name(value)}")
    return value


def _string(value: Any, key: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_type_name(value)}")
    return value


def _boolean(value: Any, key: str) -> bool:
    """``value`` if it is a boolean."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be a boolean, got {_type_name(value)}")
    return value


def _integer(value: Any, key: str) -> int:
    """``value`` if it is an integer; booleans are not integers here."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {_type_name(value)}")
    return value


def _number(value: Any, key: str) -> float:
    """``value`` as a finite float; ints are accepted, booleans are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, "must be a finite number")
    return number
