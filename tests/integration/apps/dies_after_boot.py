"""An app that loads fine everywhere, but in an actor process starts a thread that ends the
process half a second later: the actor boots (loads its handlers), then dies idle. Such
actors must count as failing to boot, not be restarted for ever."""

from __future__ import annotations

import os
import sys
import threading
import time

import durable_jobs as jobs

if sys.argv[0].endswith(os.path.join("durable_jobs", "actors", "__main__.py")):
    def _end() -> None:
        time.sleep(0.5)
        os._exit(7)

    threading.Thread(target=_end, daemon=True).start()

queue = jobs.Queue()


@queue.job("noop")
def noop(args: object) -> None:
    return None
