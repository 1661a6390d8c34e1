"""Pure option handling: names, JSON payloads, seconds, times, option resolution."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

import durable_jobs as jobs
from durable_jobs.engine.options import (
    DEFAULT_MAX_BACKOFF,
    MAX_PAYLOAD,
    HandlerOptions,
    check_name,
    decode_json,
    encode_each,
    encode_json,
    resolve,
    to_epoch,
    to_seconds,
)

VALID_NAMES = ["a", "A", "send-email", "charge_payment", "app.jobs.v2", "x9-_.",
               "a" * 255]
INVALID_NAMES = ["", "abc\n", "\nabc", "1abc", "_abc", "-abc", ".abc", "a b", "a/b", "a:b",
                 "naïve", "a" * 256, " abc", "abc ", "a\tb", "a\x00b"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(jobs.InvalidNameError) as info:
        check_name(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a"]])
def test_non_string_names_are_invalid(value: object) -> None:
    with pytest.raises(jobs.InvalidNameError):
        check_name(value)


def test_invalid_name_error_is_library_error_and_value_error() -> None:
    assert issubclass(jobs.InvalidNameError, jobs.DurableJobsError)
    assert issubclass(jobs.InvalidNameError, ValueError)


def test_name_error_says_what_was_checked() -> None:
    with pytest.raises(jobs.InvalidNameError, match="queue name"):
        check_name("1q", "queue name")


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize("value", [None, 0, 1.5, "s", True, [1, "a"], {"a": {"b": [None]}}])
def test_encode_json_round_trips(value: object) -> None:
    assert decode_json(encode_json(value)) == value


def test_encode_json_is_compact_and_dataclasses_become_objects() -> None:
    assert encode_json({"a": 1, "b": [1, 2]}) == '{"a":1,"b":[1,2]}'
    assert json.loads(encode_json(Point(1, 2))) == {"x": 1, "y": 2}
    assert json.loads(encode_json([Point(1, 2)])) == [{"x": 1, "y": 2}]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (object(), "object"), (b"bytes", "bytes"), ({"a": [1, {2}]}, "set"),
     (datetime(2024, 1, 1), "datetime"), (Point, "type"), ({(1, 2): 3}, "tuple")],
)
def test_non_json_args_name_the_type(value: object, type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        encode_json(value)
    assert type_name in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, [-math.inf]])
def test_nan_and_infinity_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        encode_json(value)


def test_circular_args_are_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError):
        encode_json(loop)


def test_encode_each_gives_encode_json_text_and_leaves_every_refusal_to_it() -> None:
    """The batch encoder (its loop in C, with circular-reference markers) gives each value's
    encode_json text; a batch with a value encode_json would refuse gives None (the caller
    then encodes one at a time, and encode_json names the problem), the encoder unharmed."""
    @dataclasses.dataclass
    class Leaf:
        value: int

    loop: list[object] = []
    loop.append(loop)
    values = [{"i": 1}, [1.5, None, True, -0.0], "é\n\u2028", Leaf(2), 2**70, {}, "x" * 100]
    assert encode_each(values) == [encode_json(value) for value in values]
    assert encode_each([]) == []
    for bad in (loop, {"nested": [loop]}, {1, 2}, math.nan, object(), "x" * MAX_PAYLOAD):
        assert encode_each([{"i": 1}, bad, {"i": 2}]) is None
    assert encode_each(values) == [encode_json(value) for value in values]


def test_a_circular_batch_is_refused_with_a_high_recursion_limit() -> None:
    """enqueue_many's batch encoder keeps circular-reference markers: without them a cycle
    recursed in C until the recursion limit, and with a high limit overflowed the C stack
    (the process died of SIGSEGV) instead of raising TypeError."""
    import subprocess
    import sys

    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "import durable_jobs as jobs\n"
        "from durable_jobs.engine.options import encode_each\n"
        "loop = []; loop.append(loop)\n"
        "assert encode_each([{'i': 1}, {'big': 'x' * 100_000, 'loop': loop}]) is None\n"
        "q = jobs.Queue(jobs.Store('sqlite:///:memory:'))\n"
        "try:\n"
        "    q.enqueue_many([jobs.Sub('a', 1), jobs.Sub('a', loop)])\n"
        "except TypeError as exc:\n"
        "    print('refused:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Circular reference" in done.stdout


def test_payload_limit_is_one_mib_inclusive() -> None:
    assert MAX_PAYLOAD == 1024 * 1024
    exactly = "x" * (MAX_PAYLOAD - 2)  # plus two quotes
    assert len(encode_json(exactly).encode()) == MAX_PAYLOAD
    with pytest.raises(jobs.PayloadTooLargeError):
        encode_json(exactly + "x")


def test_payload_limit_counts_utf8_bytes() -> None:
    """The limit counts the JSON in UTF-8, where 'é' takes 2 bytes; it is stored escaped
    (\\u00e9), which any database encoding takes as it is."""
    fits = "é" * ((MAX_PAYLOAD - 2) // 2)  # plus two quotes
    assert encode_json(fits) == '"' + "\\u00e9" * len(fits) + '"'
    with pytest.raises(jobs.PayloadTooLargeError, match=f"{MAX_PAYLOAD + 2} bytes"):
        encode_json(fits + "é")
    wide = "東" * ((MAX_PAYLOAD - 2) // 3)  # 3 bytes each in UTF-8
    assert json.loads(encode_json(wide)) == wide
    with pytest.raises(jobs.PayloadTooLargeError):
        encode_json(wide + "東")
    assert encode_json({"name": "Zoë"}) == '{"name":"Zo\\u00eb"}'


def test_payload_error_is_library_error() -> None:
    assert issubclass(jobs.PayloadTooLargeError, jobs.DurableJobsError)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), (10, 10.0), (2.5, 2.5), (timedelta(minutes=2), 120.0),
     (timedelta(0), 0.0)],
)
def test_to_seconds(value: object, seconds: float | None) -> None:
    assert to_seconds(value, "delay") == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-1)])
def test_to_seconds_refuses_negative(value: object) -> None:
    with pytest.raises(ValueError, match="delay"):
        to_seconds(value, "delay")  # type: ignore[arg-type]


@pytest.mark.parametrize("call", [
    lambda q, t: q.enqueue("a", timeout=t),
    lambda q, t: q.register("a", print, timeout=t),
    lambda q, t: q.enqueue_many([jobs.Sub("a", timeout=t)]),
    lambda q, t: q.worker({"default": 1}, poll_interval=t),
    lambda q, t: q.worker({"default": 1}, lease_timeout=t),
])
@pytest.mark.parametrize("value", [0, -1, -0.5, float("inf")])
def test_a_positive_duration_refused_says_greater_than_zero(tmp_path, call, value: float  # noqa: ANN001
                                                            ) -> None:
    """A timeout or interval must be > 0: 0 and -1 get the same message, which says so
    (a -1 was told ">= 0", as if 0 would do)."""
    queue = jobs.Queue(f"sqlite:///{tmp_path}/jobs.db")
    with pytest.raises(jobs.InvalidOptionError, match=r"must be a finite number of seconds > 0"):
        call(queue, value)


@pytest.mark.parametrize("value", ["10", True, [1]])
def test_to_seconds_refuses_wrong_types(value: object) -> None:
    with pytest.raises(TypeError, match="delay"):
        to_seconds(value, "delay")  # type: ignore[arg-type]


def test_to_epoch_naive_means_utc() -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    aware = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    paris = datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert to_epoch(naive) == to_epoch(aware) == to_epoch(paris) == aware.timestamp()


def test_resolve_defaults() -> None:
    r = resolve(HandlerOptions(), None)
    assert (r.queue, r.priority, r.max_attempts, r.timeout, r.max_backoff) == (
        "default", 0, 4, None, DEFAULT_MAX_BACKOFF)


def test_resolve_registration_then_call() -> None:
    reg = HandlerOptions(retries=7, timeout=9.0, queue="regq", priority=3, max_backoff=10.0)
    r = resolve(HandlerOptions(), reg)
    assert (r.queue, r.priority, r.max_attempts, r.timeout, r.max_backoff) == (
        "regq", 3, 8, 9.0, 10.0)
    call = HandlerOptions(retries=0, timeout=1.0, queue="callq", priority=-5, max_backoff=2.0)
    r = resolve(call, reg)
    assert (r.queue, r.priority, r.max_attempts, r.timeout, r.max_backoff) == (
        "callq", -5, 1, 1.0, 2.0)
    # Only what the call sets overrides; zero is a real value, not "unset".
    r = resolve(HandlerOptions(priority=0), reg)
    assert (r.queue, r.priority, r.max_attempts) == ("regq", 0, 8)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"retries": -1}, ValueError), ({"retries": 1.5}, ValueError),
     ({"retries": True}, ValueError), ({"priority": 1.5}, TypeError),
     ({"priority": True}, TypeError), ({"timeout": 0}, ValueError),
     ({"timeout": -1}, ValueError), ({"max_backoff": -1}, ValueError),
     ({"queue": "bad queue"}, jobs.InvalidNameError), ({"queue": ""}, jobs.InvalidNameError)],
)
def test_handler_options_are_validated(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error) as caught:
        HandlerOptions(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, jobs.DurableJobsError)  # API.md §5: the library's errors


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda q: q.enqueue("a", delay=-1), jobs.InvalidOptionError, "delay"),
    (lambda q: q.enqueue("a", delay="10"), jobs.InvalidOptionTypeError, "delay"),
    (lambda q: q.enqueue("a", run_at="2030-01-01"), jobs.InvalidOptionTypeError, "run_at"),
    (lambda q: q.enqueue("a", retries=1.5), jobs.InvalidOptionError, "retries"),
    (lambda q: q.enqueue("a", priority="high"), jobs.InvalidOptionTypeError, "priority"),
    (lambda q: q.enqueue("a", timeout=0), jobs.InvalidOptionError, "timeout"),
    (lambda q: q.enqueue("a", unique=""), jobs.InvalidOptionError, "unique"),
    (lambda q: q.enqueue("a", unique=5), jobs.InvalidOptionTypeError, "unique"),
    (lambda q: q.enqueue_many([("a", 1)]), jobs.InvalidOptionTypeError, "jobs.Sub"),
    (lambda q: q.enqueue_many([jobs.Sub("a", retries=-1)]), jobs.InvalidOptionError, "retries"),
    (lambda q: q.register("a", "not callable"), jobs.InvalidOptionTypeError, "callable"),
    (lambda q: jobs.Threshold(1.5), jobs.InvalidOptionError, "Threshold"),
    (lambda q: jobs.Threshold("half"), jobs.InvalidOptionTypeError, "Threshold"),
    (lambda q: jobs.Every(-5), jobs.InvalidOptionError, "interval"),
    (lambda q: q.worker({"default": 0}), jobs.InvalidOptionError, "concurrency"),
    (lambda q: q.worker({"default": 1025}), jobs.InvalidOptionError, "from 1 to 1024"),
    (lambda q: q.result("x", timeout="1"), jobs.InvalidOptionTypeError, "timeout"),
    (lambda q: q.result("x", timeout=-1), jobs.InvalidOptionError, "timeout"),
    # out of what the database and a datetime hold (used to be driver or Python errors)
    (lambda q: q.enqueue("a", priority=2**31), jobs.InvalidOptionError, "priority"),
    (lambda q: q.enqueue("a", priority=-2**31 - 1), jobs.InvalidOptionError, "priority"),
    (lambda q: q.enqueue("a", priority=2**63), jobs.InvalidOptionError, "priority"),
    (lambda q: q.enqueue("a", retries=2**31 - 1), jobs.InvalidOptionError, "retries"),
    (lambda q: q.enqueue_many([jobs.Sub("a", priority=2**40)]), jobs.InvalidOptionError,
     "priority"),
    (lambda q: q.enqueue("a", delay=1e12), jobs.InvalidOptionError, "year 9999"),
    (lambda q: q.enqueue("a", max_backoff=float("nan")), jobs.InvalidOptionError,
     "max_backoff"),
    # worker options (used to be taken, then spin the supervisor or kill its thread)
    (lambda q: q.worker({"default": 1}, poll_interval=0), jobs.InvalidOptionError,
     "poll_interval"),
    (lambda q: q.worker({"default": 1}, poll_interval=float("nan")), jobs.InvalidOptionError,
     "poll_interval"),
    (lambda q: q.worker({"default": 1}, poll_interval="x"), jobs.InvalidOptionTypeError,
     "poll_interval"),
    (lambda q: q.worker({"default": 1}, heartbeat_interval=-1), jobs.InvalidOptionError,
     "heartbeat_interval"),
    (lambda q: q.worker({"default": 1}, lease_timeout=0), jobs.InvalidOptionError,
     "lease_timeout"),
    (lambda q: q.worker({"default": 1}, shutdown_timeout=-1), jobs.InvalidOptionError,
     "shutdown_timeout"),
    (lambda q: q.worker({"default": 1}, prefetch=-1), jobs.InvalidOptionError, "prefetch"),
    (lambda q: q.worker({"default": 1}, prefetch=1.5), jobs.InvalidOptionTypeError,
     "prefetch"),
    (lambda q: q.worker({"default": 1}, max_jobs_per_actor=0), jobs.InvalidOptionError,
     "max_jobs_per_actor"),
    (lambda q: q.worker({"default": 1}, max_memory_mb="1G"), jobs.InvalidOptionTypeError,
     "max_memory_mb"),
    (lambda q: q.worker({"default": 1}, pause_mode="hard"), jobs.InvalidOptionError,
     "pause mode"),
    (lambda q: q.worker(["default"]), jobs.InvalidOptionTypeError, "queues"),
    # wrong types and sizes that used to escape as Python or driver errors
    (lambda q: q.enqueue("a", retries="3"), jobs.InvalidOptionTypeError, "retries"),
    (lambda q: q.register("a", print, retries="3"), jobs.InvalidOptionTypeError, "retries"),
    (lambda q: q.register("a", print, timeout="5"), jobs.InvalidOptionTypeError, "timeout"),
    (lambda q: q.register("a", print, timeout=10**400), jobs.InvalidOptionError, "timeout"),
    (lambda q: q.enqueue("a", delay=10**400), jobs.InvalidOptionError, "delay"),
    (lambda q: q.enqueue("a", max_backoff=10**400), jobs.InvalidOptionError, "max_backoff"),
    (lambda q: q.enqueue("a", run_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))),
     jobs.InvalidOptionError, "run_at .* year 1"),
    (lambda q: q.enqueue("a", connection=q.store.engine), jobs.InvalidOptionTypeError,
     "sqlalchemy Connection, got Engine"),
    (lambda q: q.enqueue_many([jobs.Sub("a")], connection="conn"), jobs.InvalidOptionTypeError,
     "sqlalchemy Connection, got str"),
])
def test_bad_options_raise_the_library_errors(tmp_path, call, error: type, words: str) -> None:  # noqa: ANN001
    """Each is a DurableJobsError (API.md §5) and still the ValueError or TypeError that
    Python code expects; nothing is written."""
    store = jobs.Store(f"sqlite:///{tmp_path}/jobs.db")
    store.migrate()
    queue = jobs.Queue(store)
    with pytest.raises(error, match=words) as caught:
        call(queue)
    assert isinstance(caught.value, jobs.DurableJobsError)
    assert isinstance(caught.value, TypeError if error is jobs.InvalidOptionTypeError
                      else ValueError)
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0
    store.dispose()


def test_job_ids_are_time_ordered_uuid7s() -> None:
    """Ids made later sort later (locality in the table and its indexes; enqueue order
    breaks run_at ties), across batches and single ids, and never repeat."""
    import uuid

    from durable_jobs.engine.rows import new_id, new_ids

    before_ms = time.time_ns() // 1_000_000
    ids = [*new_ids(5000), new_id(), *new_ids(1), *new_ids(3000)]
    after_ms = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    stamp = int(ids[0].replace("-", "")[:12], 16)
    assert before_ms <= stamp <= after_ms + 1


def test_job_ids_made_in_threads_are_unique() -> None:
    import threading

    from durable_jobs.engine.rows import new_ids

    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        for _ in range(200):
            out.extend(new_ids(50))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [job_id for out in made for job_id in out]
    assert len(set(everything)) == len(everything) == 4 * 200 * 50
    assert all(out == sorted(out) for out in made)


def test_job_ids_are_reserved_when_asked_for_not_when_read() -> None:
    from durable_jobs.engine.rows import new_ids

    first, second = new_ids(2), new_ids(2)
    later = list(second)
    earlier = list(first)
    assert earlier + later == sorted(earlier + later)


@pytest.mark.parametrize(
    ("ms", "counter", "count"),
    [
        (1_790_000_000_000, 5, 1_000),  # one run
        (1_790_000_000_000, (1 << 18) - 300, 1_000),  # the counter's low 18 bits wrap
        (1_790_000_000_000, (1 << 30) - 500, 1_000),  # the counter is full: next millisecond
        (1_790_000_000_000, 0, 64),  # the smallest batch made by columns
    ],
)
def test_ids_made_by_columns_match_ids_made_one_at_a_time(ms: int, counter: int,
                                                          count: int) -> None:
    """Big batches format ids a column at a time; they must be the very ids the simple
    formatter makes (all but the random bits), in order, valid and distinct."""
    import uuid

    from durable_jobs.engine.rows import _format_by_columns, _format_ids

    simple = list(_format_ids(count, ms, counter))
    by_columns = list(_format_by_columns(count, ms, counter))
    assert [i[:25] for i in by_columns] == [i[:25] for i in simple]
    assert by_columns == sorted(by_columns) and len(set(by_columns)) == count
    for job_id in by_columns:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    randoms = {job_id[25:] for job_id in by_columns}
    assert len(randoms) == count  # 44 random bits each: a repeat here means a bug


def test_encoder_recovers_after_a_failed_encode() -> None:
    """The reused encoder's circular-reference markers must not outlive a failed call: the
    C encoder leaves the containers on the failing path marked."""
    for bad in (object(), float("nan")):
        box: list[object] = [bad]
        with pytest.raises(TypeError):
            encode_json({"box": box})
        box[0] = 1
        assert encode_json({"box": box}) == '{"box":[1]}'


def test_encoding_the_same_object_in_threads_at_once() -> None:
    """Several threads encoding one object: no false circular reference (per-thread
    encoders), the same text everywhere."""
    from tests.helpers import run_in_threads

    class Yielding(int):
        def __deepcopy__(self, memo: object) -> int:
            time.sleep(0)  # let other threads run while a dataclass is converted
            return int(self)

    @dataclasses.dataclass
    class Leaf:
        value: int

    payload = {"items": [Leaf(Yielding(i)) for i in range(200)], "nested": [[1], {"x": None}]}
    expected = encode_json(payload)
    results: list[str] = []
    errors: list[BaseException] = []

    def encode() -> None:
        try:
            for _ in range(50):
                results.append(encode_json(payload))
        except BaseException as error:  # recorded for the assertion below
            errors.append(error)

    run_in_threads(encode, 4)
    assert not errors and results == [expected] * 200


def test_a_shape_resolved_before_a_registration_is_not_kept() -> None:
    """An enqueue that resolved a job's options just before its handler was registered must
    not leave those stale options cached for every later enqueue."""
    from durable_jobs.engine import rows
    from durable_jobs.engine.options import NO_OPTIONS
    from durable_jobs.engine.registry import Registry

    registry = Registry()
    real = rows.resolve_shape

    def register_meanwhile(reg: Registry, name: str, call: HandlerOptions) -> rows.Shape:
        shape = real(reg, name, call)  # resolved without a handler...
        reg.add(name, lambda args: None, HandlerOptions(queue="mail"))  # ...then one comes
        return shape

    rows.resolve_shape = register_meanwhile  # type: ignore[assignment]
    try:
        first = rows.build_row(registry, "email", None, NO_OPTIONS, 0.0, 0.0)
    finally:
        rows.resolve_shape = real  # type: ignore[assignment]
    assert first[2] == "default"  # the racing call itself may use what it resolved
    assert rows.build_row(registry, "email", None, NO_OPTIONS, 0.0, 0.0)[2] == "mail"


def test_a_bad_job_name_is_reported_before_bad_options() -> None:
    from durable_jobs.engine.registry import Registry
    from durable_jobs.engine.rows import iter_rows

    with pytest.raises(jobs.InvalidNameError):
        list(iter_rows(Registry(), [jobs.Sub("bad name", timeout=-1)], 0.0))


def test_the_facade_shows_exactly_its_public_names() -> None:
    """Every name of __all__ resolves, and dir() shows no helper (it showed Any,
    TYPE_CHECKING and import_module); subpackages once imported are there too."""
    import types

    public = {name for name in dir(jobs) if not name.startswith("_")
              and not isinstance(getattr(jobs, name), types.ModuleType)}
    assert public == set(jobs.__all__)
    assert all(getattr(jobs, name) is not None for name in jobs.__all__)


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: jobs.PoolConfig(size=0), jobs.InvalidOptionError, "size must be >= 1"),
    (lambda: jobs.PoolConfig(size="big"), jobs.InvalidOptionTypeError, "size must be an int"),
    (lambda: jobs.PoolConfig(max_overflow=-2), jobs.InvalidOptionError, "max_overflow"),
    (lambda: jobs.PoolConfig(timeout=-5), jobs.InvalidOptionError, "timeout"),
    (lambda: jobs.PoolConfig(recycle=float("inf")), jobs.InvalidOptionError, "recycle"),
    (lambda: jobs.Store("sqlite:///x.db", pool="high"), jobs.InvalidOptionTypeError,
     "jobs.PoolConfig"),
    (lambda: jobs.Store(123), jobs.InvalidOptionTypeError, "URL or a SQLAlchemy Engine"),
    (lambda: jobs.Store("postgresql+pg8000://u@h/db"), jobs.StoreUnavailableError,
     "unsupported driver 'pg8000'"),
    (lambda: jobs.Store("sqlite+pysqlcipher:///x.db"), jobs.StoreUnavailableError,
     "unsupported driver 'pysqlcipher'"),
    (lambda: jobs.Queue(123), jobs.InvalidOptionTypeError, "jobs.Store or a database URL"),
])
def test_store_and_pool_settings_are_checked_when_made(make, error: type, words: str) -> None:  # noqa: ANN001
    """Not later, as an AttributeError or a ModuleNotFoundError from deep inside."""
    with pytest.raises(error, match=words) as caught:
        make()
    assert isinstance(caught.value, jobs.DurableJobsError)


def test_pool_settings_that_sqlalchemy_takes_are_accepted() -> None:
    assert jobs.PoolConfig(recycle=-1).recycle == -1  # never recycle, as in SQLAlchemy
    assert jobs.PoolConfig(max_overflow=-1).max_overflow == -1  # no overflow limit
    assert jobs.PoolConfig(size=1, max_overflow=0, timeout=0.5).size == 1


def test_a_store_takes_a_sqlalchemy_url_object(tmp_path) -> None:  # noqa: ANN001
    from sqlalchemy.engine import make_url

    store = jobs.Store(make_url(f"sqlite:///{tmp_path}/jobs.db"))  # API.md §1: any URL
    store.migrate()
    job_id = jobs.Queue(store).enqueue("a")
    assert jobs.Queue(store).get(job_id).status is jobs.Status.PENDING
    store.dispose()


def test_an_orm_session_as_connection_is_named(tmp_path) -> None:  # noqa: ANN001
    from sqlalchemy.orm import Session

    store = jobs.Store(f"sqlite:///{tmp_path}/jobs.db")
    store.migrate()
    queue = jobs.Queue(store)
    with Session(store.engine) as session:
        with pytest.raises(jobs.InvalidOptionTypeError, match=r"pass session\.connection\(\)"):
            queue.enqueue("a", connection=session)
        queue.enqueue("a", connection=session.connection())  # what the message says works
        session.commit()
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 1
    store.dispose()


@dataclasses.dataclass
class Order:
    id: int
    total: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total = self.id * 10


def handle_order(order: Order) -> int:
    return order.total


def test_args_stored_from_an_instance_with_init_false_fields_fit_again() -> None:
    """The stored JSON of an instance holds its init=False fields; the handler's class is
    built from the others (it makes those itself), as from a dict without them."""
    from durable_jobs.engine.registry import Registry, coerce_args

    handler = Registry().add("order", handle_order, HandlerOptions())
    stored = json.loads(encode_json(Order(7)))
    assert stored == {"id": 7, "total": 70}
    assert coerce_args(handler, stored) == Order(7)
    changed = Order(7)
    changed.total = 99  # changed after it was made: the stored value is what comes back
    assert coerce_args(handler, json.loads(encode_json(changed))).total == 99
    with pytest.raises(TypeError, match="args do not fit Order"):
        coerce_args(handler, {"id": 7, "unknown": 1})  # other keys still do not fit
