"""An app that is slow to import in the daemon (not in its actors): it notes in
``$SLOW_APP_MARK`` that the import began, then sleeps ``$SLOW_APP_DELAY`` seconds, so a
test can signal a daemon that is still starting."""

from __future__ import annotations

import os
import time

import durable_jobs as jobs
from tests.integration.apps.daemon_app import append, in_actor

if not in_actor() and os.environ.get("SLOW_APP_MARK"):
    append(os.environ["SLOW_APP_MARK"], str(os.getpid()))
    time.sleep(float(os.environ.get("SLOW_APP_DELAY", "0")))

queue = jobs.Queue()


@queue.job("noop")
def noop(args: object) -> None:
    return None
