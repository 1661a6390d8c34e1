"""What an actor loads at boot."""

from __future__ import annotations

import json
import subprocess
import sys

import cloudpickle
import pytest

from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.registry import Registry


@pytest.mark.timeout(60)
def test_handlers_sent_by_reference_load_without_cloudpickle() -> None:
    """An app's handlers (the daemon's case) travel by reference: the actor loads them with
    pickle alone, and cloudpickle (about 6 ms of a 60 ms boot) is imported only by a
    registry that holds a handler sent by value."""
    registry = Registry()
    registry.add("dump", json.dumps, HandlerOptions())  # importable: by reference
    blob = cloudpickle.dumps(registry)
    code = ("import pickle, sys, durable_jobs.actors.actor; "
            "registry = pickle.loads(sys.stdin.buffer.read()); "
            "print(registry.get('dump').fn.__module__, 'cloudpickle' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                            check=True, timeout=60).stdout.decode().split()
    assert loaded == ["json", "False"]
