"""The replay log (engine/durable.py) with a fake Runtime: no processes, no database.

Each test runs a workflow function the way the actor does (``execute`` or an installed
:class:`Execution`), feeds the checkpoints it recorded back in as stored steps, and checks
what replays, what runs again and what fails.
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.actors.execution import execute
from durable_jobs.engine.durable import (
    FAN_OUT_STEP,
    JobContext,
    LeaseLost,
    StoredStep,
    Suspend,
)
from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.registry import Registry
from durable_jobs.protocol import Lease

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeRuntime:
    """Records checkpoints and events; can refuse a checkpoint (lease lost)."""

    steps: list[StoredStep] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    lose_lease_at: int | None = None

    def checkpoint(self, position: int, name: str, status: str, result: str | None,
                   error: str | None, span: int) -> None:
        if position == self.lose_lease_at:
            raise LeaseLost()
        self.steps.append(StoredStep(position, name, status, result, error, span))

    def emit(self, kind: str, data: Any) -> None:
        self.events.append((kind, data))


class Calls:
    """Handlers that count how often they ran, by name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.registry = Registry()

    def add(self, name: str, fn: Any = None) -> None:
        def counted(args: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            return fn(args) if fn is not None else {"step": name, "args": args}
        self.registry.add(name, fn if asyncio.iscoroutinefunction(fn) else counted,
                          HandlerOptions())

    def ran(self, name: str) -> int:
        return self.counts.get(name, 0)


def run(calls: Calls, workflow: Any, steps: list[StoredStep] | None = None,
        runtime: FakeRuntime | None = None, attempt: int = 1) -> Any:
    """Execute ``workflow`` as job "wf" through the actor's ``execute``; returns the Outcome."""
    calls.registry.add("wf", workflow, HandlerOptions())
    lease = Lease("job-1", "wf", "default", json.dumps({"order": 7}), attempt, 4,
                  tuple(steps or ()))
    return execute(lease, calls.registry, runtime or FakeRuntime())


def replay(runtime: FakeRuntime) -> list[StoredStep]:
    return sorted(runtime.steps, key=lambda s: s.position)


# -- jobs.call ---------------------------------------------------------------------------


def test_steps_take_positions_and_replay_without_running() -> None:
    calls = Calls()
    calls.add("charge")
    calls.add("ship")

    def workflow(args: dict) -> list[Any]:
        return [jobs.call("charge", args["order"]), jobs.call("ship", [1, 2])]

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "completed"
    assert [(s.position, s.name, s.status, s.span) for s in first.steps] == [
        (0, "charge", "completed", 0), (1, "ship", "completed", 0)]
    assert calls.counts == {"charge": 1, "ship": 1}

    second = FakeRuntime()
    again = run(calls, workflow, steps=replay(first), runtime=second)
    assert again.kind == "completed" and again.result == outcome.result
    assert json.loads(again.result) == [{"step": "charge", "args": 7},
                                        {"step": "ship", "args": [1, 2]}]
    assert calls.counts == {"charge": 1, "ship": 1}  # nothing ran again
    assert second.steps == []  # and nothing was checkpointed again


def test_failing_step_is_not_stored_and_earlier_steps_replay() -> None:
    calls = Calls()
    calls.add("one")
    attempts = {"two": 0}

    def two(args: Any) -> str:
        attempts["two"] += 1
        if attempts["two"] == 1:
            raise ValueError("flaky")
        return "ok"

    calls.add("two", two)

    def workflow(args: Any) -> Any:
        return [jobs.call("one"), jobs.call("two")]

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "failed" and not outcome.no_retry
    assert outcome.error.type == "ValueError" and outcome.error.message == "flaky"
    assert [s.name for s in first.steps] == ["one"]  # the failed step left nothing

    second = FakeRuntime()
    outcome = run(calls, workflow, steps=replay(first), runtime=second, attempt=2)
    assert outcome.kind == "completed"
    assert json.loads(outcome.result) == [{"step": "one", "args": None}, "ok"]
    assert calls.ran("one") == 1 and attempts["two"] == 2
    assert [(s.position, s.name) for s in second.steps] == [(1, "two")]


def test_null_result_is_stored_and_replayed_as_none() -> None:
    calls = Calls()
    calls.add("nothing", lambda args: None)

    def workflow(args: Any) -> Any:
        return {"value": jobs.call("nothing")}

    first = FakeRuntime()
    run(calls, workflow, runtime=first)
    assert first.steps[0].result == "null"
    outcome = run(calls, workflow, steps=replay(first))
    assert json.loads(outcome.result) == {"value": None}
    assert calls.ran("nothing") == 1


def test_non_determinism_names_position_and_both_steps() -> None:
    calls = Calls()
    calls.add("a")
    calls.add("b")
    stored = [StoredStep(0, "a", "completed", '"x"', None)]

    def workflow(args: Any) -> Any:
        return jobs.call("b")

    outcome = run(calls, workflow, steps=stored)
    assert outcome.kind == "failed" and outcome.no_retry
    assert outcome.error.type == "NonDeterminismError"
    message = outcome.error.message
    assert "step 0" in message and "'a'" in message and "'b'" in message
    assert calls.counts == {}  # "b" never ran


def test_non_determinism_error_fields() -> None:
    calls = Calls()
    calls.add("a")
    calls.add("b")
    stored = [StoredStep(0, "a", "completed", "1", None), StoredStep(1, "a", "completed", "2",
                                                                      None)]
    seen: list[jobs.NonDeterminismError] = []

    def workflow(args: Any) -> Any:
        jobs.call("a")
        try:
            jobs.call("b")
        except jobs.NonDeterminismError as exc:
            seen.append(exc)
            raise

    outcome = run(calls, workflow, steps=stored)
    assert outcome.no_retry and outcome.error.type == "NonDeterminismError"
    (exc,) = seen
    assert (exc.position, exc.stored, exc.requested) == (1, "a", "b")


def test_no_retry_step_is_stored_failed_and_reraised_on_replay() -> None:
    calls = Calls()

    def declined(args: Any) -> Any:
        raise jobs.NoRetry("card declined")

    calls.add("charge", declined)
    calls.add("after")
    caught: list[str] = []

    def workflow(args: Any) -> Any:
        try:
            jobs.call("charge")
        except jobs.NoRetry as exc:
            caught.append(str(exc))
        return jobs.call("after")

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "completed"
    step = first.steps[0]
    assert (step.position, step.name, step.status, step.result) == (0, "charge", "failed", None)
    assert json.loads(step.error)["type"] == "NoRetry"

    run(calls, workflow, steps=replay(first)[:1])  # replay with only the failed step stored
    assert calls.ran("charge") == 1  # re-raised from the log, not run again
    assert caught == ["card declined", "card declined"]
    assert calls.ran("after") == 2  # "after" was not stored the second time round


def test_uncaught_no_retry_step_fails_the_job_without_retry() -> None:
    calls = Calls()
    calls.add("charge", lambda args: (_ for _ in ()).throw(jobs.NoRetry("declined")))

    def workflow(args: Any) -> Any:
        return jobs.call("charge")

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "failed" and outcome.no_retry
    assert str(outcome.error) == "NoRetry: declined"
    again = run(calls, workflow, steps=replay(first))
    assert again.no_retry and str(again.error) == "NoRetry: declined"
    assert calls.ran("charge") == 1


def test_nested_calls_are_depth_first_and_a_finished_outer_step_skips_its_span() -> None:
    calls = Calls()
    calls.add("leaf")

    def outer(args: Any) -> Any:
        return [jobs.call("leaf", "x"), jobs.call("leaf", "y")]

    calls.add("outer", outer)

    def workflow(args: Any) -> Any:
        return [jobs.call("outer"), jobs.call("leaf", "z")]

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "completed"
    assert [(s.position, s.name, s.span) for s in replay(first)] == [
        (0, "outer", 2), (1, "leaf", 0), (2, "leaf", 0), (3, "leaf", 0)]
    assert calls.counts == {"outer": 1, "leaf": 3}

    # Only the outer step (with its span) and the last step: the nested ones are skipped.
    stored = [s for s in first.steps if s.position in (0, 3)]
    again = run(calls, workflow, steps=stored)
    assert again.result == outcome.result
    assert calls.counts == {"outer": 1, "leaf": 3}


def test_nested_calls_replay_when_the_outer_step_did_not_finish() -> None:
    calls = Calls()
    calls.add("leaf")
    state = {"crash": True}

    def outer(args: Any) -> Any:
        first = jobs.call("leaf", "x")
        if state["crash"]:
            raise RuntimeError("crash inside the outer step")
        return [first, jobs.call("leaf", "y")]

    calls.add("outer", outer)

    def workflow(args: Any) -> Any:
        return [jobs.call("outer"), jobs.call("leaf", "z")]

    first = FakeRuntime()
    assert run(calls, workflow, runtime=first).kind == "failed"
    assert [(s.position, s.name) for s in first.steps] == [(1, "leaf")]

    state["crash"] = False
    second = FakeRuntime()
    outcome = run(calls, workflow, steps=replay(first), runtime=second, attempt=2)
    assert outcome.kind == "completed"
    assert json.loads(outcome.result) == [
        [{"step": "leaf", "args": "x"}, {"step": "leaf", "args": "y"}],
        {"step": "leaf", "args": "z"}]
    assert calls.counts == {"outer": 2, "leaf": 3}  # leaf "x" ran once
    assert [(s.position, s.name, s.span) for s in second.steps] == [
        (2, "leaf", 0), (0, "outer", 2), (3, "leaf", 0)]


def test_step_args_and_results_go_through_json() -> None:
    calls = Calls()
    calls.add("echo", lambda args: {"tuple": (1, 2)})

    def workflow(args: Any) -> Any:
        value = jobs.call("echo", (3, 4))
        return value["tuple"]

    outcome = run(calls, workflow)
    assert json.loads(outcome.result) == [1, 2]  # the live run sees the JSON form too

    def bad_args(args: Any) -> Any:
        return jobs.call("echo", object())

    outcome = run(calls, bad_args)
    assert outcome.kind == "failed" and outcome.error.type == "TypeError"
    assert "object" in outcome.error.message


class Size(enum.IntEnum):
    SMALL = 1


class Name(str):
    """A str subclass: JSON hands it on as a plain str."""


@pytest.mark.parametrize("value", [
    7, -(2**63), 2**63 - 1, 2**64, 0.5, -0.0, True, False, None, "", "text", "é\u2603\n",
    Size.SMALL, Name("x"), [1, (2, 3)], {"a": (1,)},
])
def test_step_args_and_results_arrive_as_json_would_give_them(value: Any) -> None:
    """A number, a string, a bool or None is handed on as itself (no JSON round trip is
    needed); anything else as its JSON form. Either way, exactly what JSON gives back."""
    calls = Calls()
    seen: list[Any] = []
    calls.add("echo", lambda args: seen.append(args) or args)
    calls.add("give", lambda _args: value)  # returns the value itself, not its JSON form

    def workflow(args: Any) -> Any:
        echoed, given = jobs.call("echo", value), jobs.call("give")
        return [{"type": type(result).__name__, "value": result} for result in (echoed, given)]

    outcome = run(calls, workflow)
    expected = json.loads(json.dumps(value))
    assert seen == [expected] and type(seen[0]) is type(expected)
    assert json.loads(outcome.result) == [{"type": type(expected).__name__, "value": expected}] * 2


@pytest.mark.parametrize(("args", "error", "says"), [
    (float("nan"), "TypeError", "not valid JSON"),
    (float("inf"), "TypeError", "not valid JSON"),
    ("x" * (1024 * 1024), "PayloadTooLargeError", "1 MiB"),
    ("\x00" * (1024 * 1024 // 6 + 1), "PayloadTooLargeError", "1 MiB"),  # 6 bytes each
    ({1, 2}, "TypeError", "set"),
])
def test_step_args_that_are_not_json_fail_the_job_naming_the_problem(
        args: Any, error: str, says: str) -> None:
    calls = Calls()
    calls.add("echo")

    def workflow(_args: Any) -> Any:
        return jobs.call("echo", args)

    outcome = run(calls, workflow)
    assert outcome.kind == "failed" and outcome.error.type == error
    assert says in outcome.error.message and calls.ran("echo") == 0
    # Too large is too large at every attempt: no retry uses one up.
    assert outcome.no_retry is (error == "PayloadTooLargeError")


def test_a_step_result_over_1_mib_fails_the_job_without_retry() -> None:
    calls = Calls()
    calls.add("big", lambda _args: "x" * (1024 * 1024))

    def workflow(_args: Any) -> Any:
        return jobs.call("big")

    outcome = run(calls, workflow)
    assert outcome.kind == "failed" and outcome.no_retry
    assert outcome.error.type == "PayloadTooLargeError"
    assert "the result of step 'big'" in outcome.error.message


def test_async_step_from_sync_and_async_workflows() -> None:
    calls = Calls()

    async def fetch(args: Any) -> Any:
        await asyncio.sleep(0)
        return {"fetched": args}

    calls.add("fetch", fetch)

    def sync_workflow(args: Any) -> Any:
        return jobs.call("fetch", 1)

    async def async_workflow(args: Any) -> Any:
        return [jobs.call("fetch", 2), jobs.current_job().id]

    runtime = FakeRuntime()
    assert json.loads(run(calls, sync_workflow, runtime=runtime).result) == {"fetched": 1}
    outcome = run(calls, async_workflow, runtime=runtime)
    assert json.loads(outcome.result) == [{"fetched": 2}, "job-1"]
    assert [s.name for s in runtime.steps] == ["fetch", "fetch"]


def test_unknown_step_name_fails_without_retry() -> None:
    calls = Calls()

    def workflow(args: Any) -> Any:
        return jobs.call("missing")

    outcome = run(calls, workflow)
    assert outcome.kind == "failed" and outcome.no_retry
    assert outcome.error.type == "HandlerNotFoundError"


def test_lost_lease_at_a_checkpoint_reports_nothing() -> None:
    calls = Calls()
    calls.add("a")
    calls.add("b")

    def workflow(args: Any) -> Any:
        jobs.call("a")
        return jobs.call("b")

    assert run(calls, workflow, runtime=FakeRuntime(lose_lease_at=1)) is None
    assert calls.counts == {"a": 1, "b": 1}


def test_suspend_and_lease_lost_pass_through_except_exception() -> None:
    calls = Calls()
    calls.add("a")

    def workflow(args: Any) -> Any:
        try:
            jobs.fan_out([jobs.Sub("a", 1)])
        except Exception:  # noqa: BLE001 - the point: a broad except cannot swallow Suspend
            return "swallowed"
        return "returned"

    outcome = run(calls, workflow)
    assert outcome.kind == "suspended"
    assert issubclass(Suspend, BaseException) and not issubclass(Suspend, Exception)
    assert not issubclass(LeaseLost, Exception)


# -- jobs.current_job / emit_event ---------------------------------------------------------


def test_current_job_inside_handler_and_step() -> None:
    calls = Calls()
    seen: list[jobs.JobContext] = []

    def step(args: Any) -> Any:
        seen.append(jobs.current_job())
        return None

    calls.add("step", step)

    def workflow(args: Any) -> Any:
        seen.append(jobs.current_job())
        jobs.call("step")
        jobs.emit_event("progress", {"pct": 50})
        return None

    runtime = FakeRuntime()
    run(calls, workflow, runtime=runtime, attempt=3)
    expected = JobContext("job-1", "wf", "default", 3, {"order": 7})
    assert seen == [expected, expected]
    assert runtime.events == [("progress", {"pct": 50})]


def test_emit_event_checks_its_kind_and_data_and_sends_plain_json() -> None:
    @dataclass
    class Progress:
        pct: int

    def workflow(args: Any) -> Any:
        jobs.emit_event("progress", Progress(75))  # as a result is stored: a dict
        for kind, data, error, match in [("progress", {1, 2}, TypeError, "set"),
                                         ("bad kind", None, jobs.InvalidNameError, "event kind"),
                                         (7, None, jobs.InvalidNameError, "event kind"),
                                         ("big", "x" * (1 << 20), jobs.PayloadTooLargeError,
                                          "1 MiB")]:
            with pytest.raises(error, match=match):
                jobs.emit_event(kind, data)
        return None

    runtime = FakeRuntime()
    outcome = run(Calls(), workflow, runtime=runtime)
    assert outcome.kind == "completed", outcome.error
    assert runtime.events == [("progress", {"pct": 75})]


def test_outside_a_handler_durable_functions_raise() -> None:
    for fn in (jobs.current_job, lambda: jobs.call("a"), lambda: jobs.fan_out([]),
               lambda: jobs.emit_event("x")):
        with pytest.raises(jobs.DurableJobsError, match="inside a running job handler"):
            fn()


def test_execute_uninstalls_the_execution_afterwards() -> None:
    calls = Calls()
    run(calls, lambda args: jobs.current_job().id)
    with pytest.raises(jobs.DurableJobsError):
        jobs.current_job()


# -- jobs.fan_out ----------------------------------------------------------------------------


def test_fan_out_suspends_with_its_spec() -> None:
    calls = Calls()
    calls.add("before")

    def workflow(args: Any) -> Any:
        jobs.call("before")
        jobs.fan_out([jobs.Sub("item", {"i": i}, priority=i, retries=1, queue="q1", timeout=5)
                      for i in range(3)],
                     strategy=jobs.Threshold(0.5), queue="batch", retries=2, timeout=60,
                     cancel_on_parent_failure=True)
        raise AssertionError("fan_out must not return the first time")

    outcome = run(calls, workflow)
    assert outcome.kind == "suspended"
    spec = outcome.fan_out
    assert spec.position == 1
    assert (spec.strategy, spec.threshold, spec.queue, spec.retries, spec.timeout,
            spec.cancel_on_parent_failure) == ("threshold", 0.5, "batch", 2, 60.0, True)
    assert [(s.name, json.loads(s.args), s.priority, s.retries, s.queue, s.timeout)
            for s in spec.subs] == [("item", {"i": i}, i, 1, "q1", 5) for i in range(3)]


@pytest.mark.parametrize(("strategy", "kind", "threshold"), [
    (None, "fail_fast", None), (jobs.FailFast(), "fail_fast", None),
    (jobs.CollectAll(), "collect_all", None), (jobs.Threshold(1), "threshold", 1.0)])
def test_fan_out_strategy_fields(strategy: Any, kind: str, threshold: float | None) -> None:
    def workflow(args: Any) -> Any:
        jobs.fan_out([jobs.Sub("x")], strategy=strategy)

    outcome = run(Calls(), workflow)
    assert (outcome.fan_out.strategy, outcome.fan_out.threshold) == (kind, threshold)
    assert outcome.fan_out.cancel_on_parent_failure is False


def _results(*entries: tuple[Any, dict[str, str] | None]) -> str:
    return json.dumps([{"index": i, "value": v, "error": e} for i, (v, e) in enumerate(entries)])


def test_fan_out_replays_stored_results_in_order() -> None:
    calls = Calls()
    calls.add("after")
    err = {"type": "ValueError", "message": "bad", "traceback": "tb"}
    encoded = _results((10, None), (None, err), (30, None))
    stored = [StoredStep(0, FAN_OUT_STEP, "completed", encoded, None)]
    got: list[Any] = []

    def workflow(args: Any) -> Any:
        results = jobs.fan_out([jobs.Sub("item", i) for i in range(3)],
                               strategy=jobs.CollectAll())
        got.append(results)
        ok, failed = jobs.partition(results)
        jobs.call("after")
        return {"values": jobs.values(results), "ok": [r.index for r in ok],
                "failed": [r.index for r in failed], "all": jobs.all_succeeded(results)}

    runtime = FakeRuntime()
    outcome = run(calls, workflow, steps=stored, runtime=runtime)
    assert json.loads(outcome.result) == {"values": [10, 30], "ok": [0, 2], "failed": [1],
                                          "all": False}
    (results,) = got
    assert results[1] == jobs.Result(1, None, jobs.JobError("ValueError", "bad", "tb"))
    assert [(s.position, s.name) for s in runtime.steps] == [(1, "after")]


@pytest.mark.parametrize(("kind", "cls"), [("FanOutFailedError", jobs.FanOutFailedError),
                                           ("FanOutTimeoutError", jobs.FanOutTimeoutError)])
def test_failed_fan_out_raises_with_every_result(kind: str, cls: type) -> None:
    unfinished = {"type": "Unfinished", "message": "not finished", "traceback": ""}
    err = {"type": "ValueError", "message": "bad", "traceback": ""}
    error = {"type": kind, "message": "fan-out failed: 2 of 3",
             "results": json.loads(_results((1, None), (None, err), (None, unfinished)))}
    stored = [StoredStep(0, FAN_OUT_STEP, "failed", None, json.dumps(error))]
    caught: list[jobs.FanOutFailedError] = []

    def catching(args: Any) -> Any:
        try:
            jobs.fan_out([jobs.Sub("item", i) for i in range(3)])
        except jobs.FanOutFailedError as exc:
            caught.append(exc)
        return "continued"

    assert json.loads(run(Calls(), catching, steps=stored).result) == "continued"
    (exc,) = caught
    assert type(exc) is cls and str(exc) == "fan-out failed: 2 of 3"
    assert [r.index for r in exc.results] == [0, 1, 2]
    assert exc.results[0].value == 1 and exc.results[0].error is None
    assert exc.results[2].value is None and exc.results[2].error.type == "Unfinished"

    def uncaught(args: Any) -> Any:
        jobs.fan_out([jobs.Sub("item", i) for i in range(3)])

    outcome = run(Calls(), uncaught, steps=stored)
    assert outcome.kind == "failed" and outcome.no_retry  # no retry unless caught
    assert outcome.error.type == kind


def test_empty_fan_out_completes_at_once() -> None:
    calls = Calls()
    calls.add("after")

    def workflow(args: Any) -> Any:
        return [jobs.fan_out([]), jobs.call("after")]

    runtime = FakeRuntime()
    outcome = run(calls, workflow, runtime=runtime)
    assert outcome.kind == "completed"
    assert [(s.position, s.name, s.result) for s in runtime.steps][0] == (0, FAN_OUT_STEP, "[]")
    assert runtime.steps[1].position == 1


def test_fan_out_position_mismatch_is_non_deterministic() -> None:
    stored = [StoredStep(0, "charge", "completed", "1", None)]

    def workflow(args: Any) -> Any:
        jobs.fan_out([jobs.Sub("item", 1)])

    outcome = run(Calls(), workflow, steps=stored)
    assert outcome.no_retry and outcome.error.type == "NonDeterminismError"
    assert "'charge'" in outcome.error.message and FAN_OUT_STEP in outcome.error.message

    calls = Calls()
    calls.add("charge")
    fan = [StoredStep(0, FAN_OUT_STEP, "completed", "[]", None)]
    outcome = run(calls, lambda args: jobs.call("charge"), steps=fan)
    assert outcome.no_retry and outcome.error.type == "NonDeterminismError"
    assert calls.counts == {}


def test_fan_out_inside_a_step_takes_the_next_nested_position() -> None:
    calls = Calls()
    calls.add("leaf")

    def outer(args: Any) -> Any:
        jobs.call("leaf")
        return jobs.values(jobs.fan_out([jobs.Sub("leaf", 1)]))

    calls.add("outer", outer)

    def workflow(args: Any) -> Any:
        return jobs.call("outer")

    first = FakeRuntime()
    outcome = run(calls, workflow, runtime=first)
    assert outcome.kind == "suspended" and outcome.fan_out.position == 2
    assert [(s.position, s.name) for s in first.steps] == [(1, "leaf")]

    stored = [*first.steps, StoredStep(2, FAN_OUT_STEP, "completed", _results((5, None)), None)]
    second = FakeRuntime()
    outcome = run(calls, workflow, steps=stored, runtime=second)
    assert json.loads(outcome.result) == [5]
    assert [(s.position, s.name, s.span) for s in second.steps] == [(0, "outer", 2)]
    assert calls.ran("leaf") == 1


@pytest.mark.parametrize(("subs", "strategy", "error"), [
    ([("item", 1)], "not a strategy", jobs.InvalidOptionTypeError),
    (["not a Sub"], None, jobs.InvalidOptionTypeError),
    ([jobs.Sub("bad name!")], None, jobs.InvalidNameError),
    ([jobs.Sub("item", object())], None, TypeError),
    # Options are checked once per distinct set: a bad one after good ones still fails.
    ([jobs.Sub("item", i) for i in range(5)] + [jobs.Sub("item", 5, priority="high")], None,
     jobs.InvalidOptionTypeError),
    ([jobs.Sub("item", i) for i in range(5)] + [jobs.Sub("item", 5, retries=[1])], None,
     jobs.InvalidOptionTypeError),  # (an unhashable option, of the wrong type)
    ([jobs.Sub("item", i) for i in range(5)] + [jobs.Sub("item", set())], None, TypeError),
    ([jobs.Sub("item", 1, priority=1), jobs.Sub("item", 2, priority=True)], None,
     jobs.InvalidOptionTypeError),
])
def test_fan_out_rejects_bad_input_before_suspending(subs: Any, strategy: Any,
                                                     error: type) -> None:
    def workflow(args: Any) -> Any:
        jobs.fan_out(subs, strategy=strategy)

    outcome = run(Calls(), workflow)
    assert outcome.kind == "failed" and outcome.error.type == error.__name__


def test_threshold_rejects_p_outside_0_1() -> None:
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        jobs.Threshold(1.5)


@pytest.mark.parametrize("ends", ["completed", "failed", "suspended"])
def test_an_outcome_carries_how_long_its_attempt_ran(ends: str) -> None:
    """The actor times the attempt itself (the supervisor paces claims by it: a slow flush
    on the supervisor's side must not make a quick job look slow)."""
    import time

    def workflow(args: Any) -> Any:
        time.sleep(0.03)
        if ends == "failed":
            raise ValueError("no")
        if ends == "suspended":
            jobs.fan_out([jobs.Sub("x")])
        return 1

    calls = Calls()
    calls.add("x")
    outcome = run(calls, workflow)
    assert outcome.kind == ends
    assert 0.03 <= outcome.seconds < 5
