"""The handler registry, dataclass args, and import-by-path.

Handlers travel to actor processes with cloudpickle: functions in importable modules go by
reference (the actor imports the module), functions defined in ``__main__`` or as closures go
by value, so ``worker.run()`` from a script just works.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from durable_jobs.engine.errors import (
    HandlerNotFoundError,
    InvalidOptionError,
    InvalidOptionTypeError,
)
from durable_jobs.engine.options import HandlerOptions, check_name


@dataclass(frozen=True)
class Handler:
    """A registered handler and its options."""

    name: str
    fn: Callable[..., Any]
    options: HandlerOptions
    arg_type: type | None
    is_async: bool


def arg_dataclass(fn: Callable[..., Any]) -> type | None:
    """The dataclass that the handler's single parameter is annotated with, if any."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations mean "no dataclass"
        return None
    hint = hints.get(params[0].name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


@functools.cache
def _not_init(cls: type) -> frozenset[str]:
    """The fields of a dataclass that its ``__init__`` does not take."""
    return frozenset(f.name for f in dataclasses.fields(cls) if not f.init)


def coerce_args(handler: Handler, args: Any) -> Any:
    """Turn JSON args into what the handler takes (a dataclass when it is annotated so)."""
    cls = handler.arg_type
    if cls is None or isinstance(args, cls):
        return args
    if not isinstance(args, dict):
        raise TypeError(f"handler {handler.name!r} takes {cls.__name__}; got "
                        f"{type(args).__name__} args")
    # Fields the class's __init__ does not take (field(init=False)) were stored from an
    # instance: it is built from the others, then given their stored values back.
    computed = _not_init(cls)
    given = {key: value for key, value in args.items() if key not in computed}
    try:
        value = cls(**given)
    except TypeError as exc:
        raise TypeError(f"args do not fit {cls.__name__} for handler {handler.name!r}: "
                        f"{exc}") from None
    for key in computed.intersection(args):
        object.__setattr__(value, key, args[key])
    return value


class Registry:
    """Handlers by job name."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        #: Resolved options by (name, enqueue options), kept by ``engine.rows``; a new
        #: registration clears them and counts a new generation.
        self.shapes: dict[tuple[str, HandlerOptions], Any] = {}
        self.generation = 0

    def add(self, name: str, fn: Callable[..., Any], options: HandlerOptions) -> Handler:
        check_name(name)
        if not callable(fn):
            raise InvalidOptionTypeError(f"handler for {name!r} is not callable: {fn!r}")
        handler = Handler(name, fn, options, arg_dataclass(fn),
                          inspect.iscoroutinefunction(fn))
        self.handlers[name] = handler
        self.generation += 1
        self.shapes.clear()
        return handler

    def get(self, name: str) -> Handler:
        try:
            return self.handlers[name]
        except KeyError:
            raise HandlerNotFoundError(f"no handler registered for job {name!r}") from None

    def find(self, name: str) -> Handler | None:
        return self.handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self.handlers)


def import_path(path: str) -> Any:
    """Import ``"package.module:attribute"``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise InvalidOptionError(f"{path!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
