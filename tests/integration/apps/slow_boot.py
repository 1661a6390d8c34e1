"""A handler module that loads slowly in actors started while ``DURABLE_TEST_BOOT_DELAY``
(seconds) is set: actors import it at boot (cloudpickle reference), so a test can make the
replacement of a killed actor slow to come up, while the actors started before boot fast.
"""

from __future__ import annotations

import os
import time

from tests.integration.apps.common import append

time.sleep(float(os.environ.get("DURABLE_TEST_BOOT_DELAY", "0")))


def hang_first_attempt(args: dict) -> float:
    """First attempt: log the pid and block; later attempts: return when they started."""
    started = time.time()
    if append(args["path"], str(os.getpid())) == 1:
        time.sleep(60)
    return started
