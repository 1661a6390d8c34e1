"""What the supervisor answers an actor's first message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from durable_jobs import protocol as p
from durable_jobs.supervisor.inbox import Inbox

pytestmark = pytest.mark.timeout(10)


class Answers(Inbox):
    """An Inbox with what ``_route`` needs for a new actor, recording what it sends."""

    def __init__(self) -> None:
        self.pool = SimpleNamespace(last_boot_error="")  # type: ignore[assignment]
        self.init = p.Init(("/app",), b"registry", 1.0)
        self.sent: list[tuple[str, Any]] = []

    def send(self, actor_id: str, message: Any) -> None:
        self.sent.append((actor_id, message))


def test_an_actor_of_this_version_gets_the_handlers() -> None:
    inbox = Answers()
    inbox._route(SimpleNamespace(id="default-1"), p.Ready(p.VERSION, 123), 0.0)  # type: ignore[arg-type]
    assert inbox.sent == [("default-1", inbox.init)]
    assert inbox.pool.last_boot_error == ""


def test_an_actor_of_another_version_is_stopped_with_an_error_naming_both() -> None:
    inbox = Answers()
    inbox._route(SimpleNamespace(id="default-1"), p.Ready(p.VERSION - 1, 123), 0.0)  # type: ignore[arg-type]
    assert inbox.sent == [("default-1", p.Stop())]
    error = inbox.pool.last_boot_error
    assert f"protocol version {p.VERSION - 1}" in error and f"supervisor {p.VERSION}" in error
    assert "restart the supervisor" in error
