"""Fan-out building blocks: :class:`Sub`, the strategies, :class:`Result` and helpers.

Pure: the store counts finished sub-jobs and asks :func:`evaluate` whether the strategy is
decided; nothing here does I/O.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from durable_jobs.engine.errors import InvalidOptionError, InvalidOptionTypeError, JobError


@dataclass(frozen=True)
class Sub:
    """One job to enqueue: ``enqueue_many`` items and ``fan_out`` sub-jobs."""

    name: str
    args: Any = None
    priority: int | None = None
    retries: int | None = None
    queue: str | None = None
    timeout: float | timedelta | None = None


T = TypeVar("T")
_OPTION_NAMES = ("name", "retries", "timeout", "queue", "priority")
_NUMBER_NAMES = ("retries", "timeout", "priority")
_OPTIONS = operator.attrgetter(*_OPTION_NAMES)
_NUMBERS = operator.attrgetter(*_NUMBER_NAMES)
_OPTION_GETTERS = {name: operator.attrgetter(name) for name in _OPTION_NAMES}


def checked_once(checked: dict[tuple[Any, ...], T], sub: Sub, check: Callable[[Sub], T]) -> T:
    """``check(sub)`` (which validates its name and options, and returns what they resolve
    to), or what it returned for an earlier Sub with the same ones: equal, and numbers of
    the same types (1, 1.0 and True are equal; only 1 is a valid priority)."""
    key = _OPTIONS(sub)
    if key[1] is not None or key[2] is not None or key[4] is not None:  # numbers given
        key = (*key, *map(type, _NUMBERS(sub)))
    try:
        found = checked.get(key)
    except TypeError:  # an unhashable option: checking it names the problem
        return check(sub)
    if found is None:
        found = checked[key] = check(sub)
    return found


def same_options(subs: list[Sub]) -> bool:
    """Whether every item is a Sub with the first one's name and options by the rule of
    ``checked_once``'s key (hashed, then compared; numbers of the same types too), each
    option compared in C."""
    if not subs or not all(map(isinstance, subs, itertools.repeat(Sub))):
        return False
    try:
        for name, getter in _OPTION_GETTERS.items():
            if len(set(map(getter, subs))) != 1:
                return False
            if name in _NUMBER_NAMES and getter(subs[0]) is not None \
                    and len(set(map(type, map(getter, subs)))) != 1:  # 1 == 1.0 == True
                return False
    except TypeError:  # an unhashable option: checking it names the problem
        return False
    return True


@dataclass(frozen=True)
class FailFast:
    """Decided failed at the first sub-job that fails for good or is cancelled."""

    kind = "fail_fast"


@dataclass(frozen=True)
class CollectAll:
    """Waits for every sub-job and always returns them all."""

    kind = "collect_all"


@dataclass(frozen=True)
class Threshold:
    """Succeeds when at least ``ceil(p * n)`` sub-jobs succeed; fails once that is impossible."""

    p: float
    kind = "threshold"

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int | float):
            raise InvalidOptionTypeError(f"Threshold(p) needs a number, got {self.p!r}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise InvalidOptionError(f"Threshold(p) needs 0 <= p <= 1, got {self.p}")


Strategy = FailFast | CollectAll | Threshold


def strategy_from(kind: str, threshold: float | None) -> Strategy:
    if kind == "fail_fast":
        return FailFast()
    if kind == "collect_all":
        return CollectAll()
    return Threshold(threshold if threshold is not None else 1.0)


def evaluate(strategy: Strategy, total: int, succeeded: int, failed: int) -> str | None:
    """``"succeeded"``, ``"failed"`` or ``None`` (undecided). ``failed`` counts cancelled too."""
    done = succeeded + failed
    if isinstance(strategy, FailFast):
        if failed:
            return "failed"
        return "succeeded" if succeeded >= total else None
    if isinstance(strategy, CollectAll):
        return "succeeded" if done >= total else None
    need = math.ceil(strategy.p * total - 1e-9)
    if succeeded + (total - done) < need:
        return "failed"
    if done >= total:
        return "succeeded"
    return None


@dataclass(frozen=True)
class Result:
    """One sub-job's result, in input order: ``error`` is None when it succeeded."""

    index: int
    value: Any
    error: JobError | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value,
                "error": None if self.error is None else self.error.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        return cls(int(data["index"]), data.get("value"), JobError.from_json(data.get("error")))


def values(results: list[Result]) -> list[Any]:
    """The values of the successful results, in order."""
    return [r.value for r in results if r.error is None]


def partition(results: list[Result]) -> tuple[list[Result], list[Result]]:
    """``(succeeded, failed)``, each in order."""
    return [r for r in results if r.error is None], [r for r in results if r.error is not None]


def all_succeeded(results: list[Result]) -> bool:
    return all(r.error is None for r in results)
