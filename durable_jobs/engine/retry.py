"""Exponential backoff: about 1 s for the first retry, doubling, ±10% jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable

BASE_DELAY = 1.0
JITTER = 0.10


def backoff(attempt: int, max_backoff: float, rand: Callable[[], float] = random.random) -> float:
    """Delay in seconds before the retry that follows failed attempt number ``attempt`` (1-based).

    The cap applies after jitter, so no delay ever exceeds ``max_backoff``.
    """
    exponent = max(attempt - 1, 0)
    raw = BASE_DELAY * 2.0 ** min(exponent, 62)
    jittered = raw * (1.0 + JITTER * (2.0 * rand() - 1.0))
    return max(0.0, min(jittered, max_backoff))
