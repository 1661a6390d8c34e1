"""Tests for ``durable_jobs.supervisor.config``: loading jobs.toml and every validation rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from durable_jobs.engine.errors import DurableJobsError
from durable_jobs.supervisor.config import (
    Config,
    ConfigError,
    QueueConfig,
    SupervisorConfig,
    load_config,
    parse_config,
)

pytestmark = pytest.mark.timeout(30)

FULL_TOML = """
app = "myapp.jobs:queue"

[database]
url = "sqlite:///jobs.db"

[supervisor]
poll_interval = 0.25
heartbeat_interval = 2
lease_timeout = 45.5
scheduler = false
pause_mode = "aggressive"
shutdown_timeout = 0
prefetch = 3
retention = 604800

[queues.default]
concurrency = 4

[queues.critical]
concurrency = 2
max_jobs_per_actor = 1000
max_memory_mb = 512
"""


def minimal(**overrides: Any) -> dict[str, Any]:
    """A valid parsed document; ``overrides`` replace or (with None) drop top-level keys."""
    data: dict[str, Any] = {
        "app": "myapp.jobs:queue",
        "database": {"url": "sqlite:///jobs.db"},
        "queues": {"default": {}},
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def write(tmp_path: Path, text: str) -> Path:
    """Write ``text`` to ``tmp_path/jobs.toml`` and return the path."""
    path = tmp_path / "jobs.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_TOML))
    assert config == Config(
        app="myapp.jobs:queue",
        database_url="sqlite:///jobs.db",
        supervisor=SupervisorConfig(
            poll_interval=0.25,
            heartbeat_interval=2.0,
            lease_timeout=45.5,
            scheduler=False,
            pause_mode="aggressive",
            shutdown_timeout=0.0,
            prefetch=3,
            retention=604800.0,
        ),
        queues=(
            QueueConfig("default", 4, None, None),
            QueueConfig("critical", 2, 1000, 512),
        ),
    )


def test_load_accepts_str_path(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, FULL_TOML))).app == "myapp.jobs:queue"


def test_ints_become_floats(tmp_path: Path) -> None:
    supervisor = load_config(write(tmp_path, FULL_TOML)).supervisor
    assert type(supervisor.heartbeat_interval) is float
    assert type(supervisor.shutdown_timeout) is float


def test_defaults_when_optional_tables_and_keys_absent() -> None:
    config = parse_config(minimal())
    assert config.supervisor == SupervisorConfig()
    assert config.supervisor == SupervisorConfig(0.5, 1.0, 30.0, True, "graceful", 30.0, 2)
    assert config.queues == (QueueConfig("default", 1, None, None),)


def test_empty_supervisor_table_gives_defaults() -> None:
    assert parse_config(minimal(supervisor={})).supervisor == SupervisorConfig()


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.app = "other:thing"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.queues[0].concurrency = 9  # type: ignore[misc]


@pytest.mark.parametrize("app", ["jobs:queue", "my_app.jobs:Queue.instance", "_p:_q"])
def test_valid_app_references(app: str) -> None:
    assert parse_config(minimal(app=app)).app == app


@pytest.mark.parametrize("name", ["a", "Critical-1", "emails.send_v2", "q" * 255])
def test_valid_queue_names(name: str) -> None:
    assert parse_config(minimal(queues={name: {}})).queues[0].name == name


def test_config_error_is_a_durable_jobs_error() -> None:
    err = ConfigError("queues.critical.concurrency", "must be >= 1")
    assert isinstance(err, DurableJobsError)
    assert (err.key, err.message) == ("queues.critical.concurrency", "must be >= 1")
    assert str(err) == "queues.critical.concurrency: must be >= 1"


SUP = "supervisor"

INVALID_CASES: list[tuple[dict[str, Any], str, str]] = [
    # top level
    ({"extra": 1}, "extra", "unknown key"),
    ({"app": None}, "app", "required"),
    ({"app": 5}, "app", "must be a string, got int"),
    ({"app": "myapp.jobs"}, "app", 'must look like "package.module:attribute"'),
    ({"app": "myapp.jobs:"}, "app", 'must look like "package.module:attribute"'),
    ({"app": "1app:queue"}, "app", 'must look like "package.module:attribute"'),
    ({"app": "my-app:queue"}, "app", 'must look like "package.module:attribute"'),
    ({"app": "a:b:c"}, "app", 'must look like "package.module:attribute"'),
    # database
    ({"database": None}, "database.url", "required"),
    ({"database": {}}, "database.url", "required"),
    ({"database": "sqlite://"}, "database", "must be a table, got str"),
    ({"database": {"url": 1}}, "database.url", "must be a string, got int"),
    ({"database": {"url": ""}}, "database.url", "must not be empty"),
    ({"database": {"url": "x", "pool": 5}}, "database.pool", "unknown key"),
    # supervisor
    ({SUP: []}, SUP, "must be a table, got array"),
    ({SUP: {"pol_interval": 1}}, "supervisor.pol_interval", "unknown key"),
    ({SUP: {"poll_interval": "1"}}, "supervisor.poll_interval", "must be a number, got str"),
    ({SUP: {"poll_interval": True}}, "supervisor.poll_interval", "must be a number, got bool"),
    ({SUP: {"poll_interval": 0}}, "supervisor.poll_interval", "must be > 0"),
    ({SUP: {"poll_interval": -0.5}}, "supervisor.poll_interval", "must be > 0"),
    ({SUP: {"poll_interval": float("inf")}}, "supervisor.poll_interval", "must be a finite number"),
    ({SUP: {"poll_interval": float("nan")}}, "supervisor.poll_interval", "must be a finite number"),
    ({SUP: {"poll_interval": 10**400}}, "supervisor.poll_interval", "must be a finite number"),
    ({SUP: {"heartbeat_interval": 0.0}}, "supervisor.heartbeat_interval", "must be > 0"),
    (
        {SUP: {"heartbeat_interval": {}}},
        "supervisor.heartbeat_interval",
        "must be a number, got table",
    ),
    ({SUP: {"lease_timeout": 0}}, "supervisor.lease_timeout", "must be > 0"),
    ({SUP: {"lease_timeout": False}}, "supervisor.lease_timeout", "must be a number, got bool"),
    ({SUP: {"scheduler": 1}}, "supervisor.scheduler", "must be a boolean, got int"),
    ({SUP: {"scheduler": "yes"}}, "supervisor.scheduler", "must be a boolean, got str"),
    ({SUP: {"pause_mode": "hard"}}, "supervisor.pause_mode", 'must be "graceful" or "aggressive"'),
    ({SUP: {"pause_mode": 1}}, "supervisor.pause_mode", "must be a string, got int"),
    ({SUP: {"shutdown_timeout": -1}}, "supervisor.shutdown_timeout", "must be >= 0"),
    ({SUP: {"shutdown_timeout": "30"}}, "supervisor.shutdown_timeout", "must be a number, got str"),
    ({SUP: {"prefetch": -1}}, "supervisor.prefetch", "must be >= 0"),
    ({SUP: {"prefetch": 1.5}}, "supervisor.prefetch", "must be an integer, got float"),
    ({SUP: {"prefetch": True}}, "supervisor.prefetch", "must be an integer, got bool"),
    ({SUP: {"retention": 0}}, "supervisor.retention", "must be > 0"),
    ({SUP: {"retention": "7d"}}, "supervisor.retention", "must be a number, got str"),
    # queues
    ({"queues": None}, "queues", "at least one queue is required"),
    ({"queues": {}}, "queues", "at least one queue is required"),
    ({"queues": [1]}, "queues", "must be a table, got array"),
    ({"queues": {"default": 4}}, "queues.default", "must be a table, got int"),
    ({"queues": {"1st": {}}}, "queues.1st", "invalid queue name"),
    ({"queues": {"has space": {}}}, "queues.has space", "invalid queue name"),
    ({"queues": {"": {}}}, "queues.", "invalid queue name"),
    ({"queues": {"abc\n": {}}}, 'queues."abc\\n"', "invalid queue name"),
    ({SUP: {"poll\tinterval": 1}}, 'supervisor."poll\\tinterval"', "unknown key"),
    ({"queues": {"q" * 256: {}}}, "queues." + "q" * 256, "invalid queue name"),
    ({"queues": {"default": {"workers": 2}}}, "queues.default.workers", "unknown key"),
    ({"queues": {"critical": {"concurrency": 0}}}, "queues.critical.concurrency", "must be >= 1"),
    ({"queues": {"critical": {"concurrency": 10**17}}}, "queues.critical.concurrency",
     "must be <= 1024"),
    (
        {"queues": {"critical": {"concurrency": "2"}}},
        "queues.critical.concurrency",
        "must be an integer, got str",
    ),
    (
        {"queues": {"critical": {"concurrency": True}}},
        "queues.critical.concurrency",
        "must be an integer, got bool",
    ),
    (
        {"queues": {"q": {"max_jobs_per_actor": 0}}},
        "queues.q.max_jobs_per_actor",
        "must be >= 1",
    ),
    (
        {"queues": {"q": {"max_memory_mb": 0.5}}},
        "queues.q.max_memory_mb",
        "must be an integer, got float",
    ),
    ({"queues": {"q": {"max_memory_mb": -1}}}, "queues.q.max_memory_mb", "must be >= 1"),
    # the first bad queue is reported even when a good one precedes it
    (
        {"queues": {"default": {}, "critical": {"concurrency": 0}}},
        "queues.critical.concurrency",
        "must be >= 1",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "message"), INVALID_CASES)
def test_invalid_config(overrides: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(**overrides))
    assert (info.value.key, info.value.message) == (key, message)
    assert str(info.value) == f"{key}: {message}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.message) == (str(path), "file not found")


def test_directory_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.key == str(tmp_path)
    assert info.value.message.startswith("cannot read file: ")


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'app = "myapp.jobs:queue"\n[database\nurl = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == str(path)
    assert info.value.message.startswith("invalid TOML: ")
    assert "line 2" in info.value.message


def test_a_file_that_is_not_utf8_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('# caf\u00e9\napp = "myapp.jobs:queue"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"invalid TOML: not UTF-8 \(byte 0xe9 at offset 5\)"):
        load_config(path)


def test_validation_error_from_file_names_dotted_key(tmp_path: Path) -> None:
    text = FULL_TOML.replace("concurrency = 2", "concurrency = 0")
    with pytest.raises(ConfigError, match=r"^queues\.critical\.concurrency: must be >= 1$"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused(url: str) -> None:
    """Private to the daemon: no producer could enqueue into it."""
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(database={"url": url}))
    assert info.value.key == "database.url" and "in-memory" in info.value.message
