"""The wire form of the supervisor <-> actor messages: every message survives encode/decode
as an equal object of its own class, and anything else on the socket is a ProtocolError."""

from __future__ import annotations

import operator
import pickle

import pytest

from durable_jobs import protocol as p
from durable_jobs.engine.durable import FanOutSpec, StoredStep, SubSpec
from durable_jobs.engine.errors import JobError, ProtocolError

pytestmark = pytest.mark.timeout(10)

STEP = StoredStep(0, "fetch", "completed", '{"a":1}', None, 2)
LEASE = p.Lease("job-1", "wf", "default", '{"x":1}', 2, 5, (STEP,), 1.5)
SPEC = FanOutSpec(3, (SubSpec("sub", "1", None, 2, "q", 4.0),), "threshold", 0.5, "q", 1,
                  60.0, True)
FAILED = p.Outcome("job-2", "failed", None, JobError("ValueError", "bad", "Traceback"),
                   True, 3.0, None, 12.5)
SUSPENDED = p.Outcome("job-3", "suspended", fan_out=SPEC)

EVERY_MESSAGE = [
    p.Ready(p.VERSION, 1234), p.Booted(), p.BootFailed("ImportError: x"),
    p.Heartbeat(None), p.Heartbeat("job-1"),
    p.Checkpoint("job-1", 4, "fetch", "completed", "1", None, 0),
    p.Checkpoint("job-1", 5, "charge", "failed", None, '{"type":"NoRetry"}', 1),
    p.Outcome("job-1", "completed", "null"), FAILED, SUSPENDED,
    p.Outcomes((p.Outcome("a", "completed", "1"), FAILED)),
    p.Revoked("job-1", "token-1"), p.Event("job-1", "progress", {"done": 3}),
    p.Init(("/app",), b"\x80registry", 1.0, True, 30.0),
    LEASE, p.Lease("job-9", "noop", "default", "null", 1, 1),
    p.Leases((LEASE, p.Lease("job-9", "noop", "default", "null", 1, 1))),
    p.Lease("job-8", "noop", "default", "null", 1, 1, token="t-8", seq=12),
    p.Revoke("job-1", None), p.Revoke("job-8", "t-8", 12),
    p.CheckpointAck("job-1", 4, True), p.CheckpointAck("job-1", 5, False),
    p.Ping(), p.Stop(),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_as_its_own_class(message: object) -> None:
    decoded = p.decode(p.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_every_message_class_is_covered() -> None:
    assert {type(m) for m in EVERY_MESSAGE} == set(p.MESSAGES)


def test_batches_hold_named_tuples_after_decoding() -> None:
    leases = p.decode(p.encode(p.Leases((LEASE,))))
    assert type(leases.leases[0]) is p.Lease and leases.leases[0].steps == (STEP,)
    outcomes = p.decode(p.encode(p.Outcomes((FAILED,))))
    assert type(outcomes.outcomes[0]) is p.Outcome and outcomes.outcomes[0].error == FAILED.error


def test_a_step_travels_as_a_tuple_of_plain_data() -> None:
    frame = pickle.loads(p.encode(p.Checkpoint("job-1", 4, "fetch", "completed", "1", None, 0)))
    assert frame == (p.MESSAGES.index(p.Checkpoint), "job-1", 4, "fetch", "completed", "1",
                     None, 0)
    assert type(frame) is tuple


@pytest.mark.parametrize(("data", "says"), [
    (b"\x80\x05garbage\xff\x00 not a pickle", "undecodable message"),
    (b"", "undecodable message"),
    (pickle.dumps({"not": "a message"}), "unexpected message type dict"),
    (pickle.dumps(()), "unexpected message type tuple"),
    (pickle.dumps((len(p.MESSAGES), "x")), "unknown message code"),
    (pickle.dumps((-1, "x")), "unknown message code"),
    (pickle.dumps(("4", "x")), "unknown message code '4'"),
    (pickle.dumps((True, "x")), "unknown message code True"),
    (pickle.dumps((p.MESSAGES.index(p.Checkpoint), "job-1")), "malformed Checkpoint"),
    (pickle.dumps((p.MESSAGES.index(p.Ready), 1, 2, 3)), "malformed Ready"),
    (pickle.dumps((p.MESSAGES.index(p.Leases), ("not", "leases"))), "malformed Leases"),
    (pickle.dumps((p.MESSAGES.index(p.Outcomes),)), "malformed Outcomes"),
    (pickle.dumps((p.MESSAGES.index(p.Leases), b"12345678")), "malformed Leases"),
    (pickle.dumps((p.MESSAGES.index(p.Leases), map(operator.truediv, [1], [0]))),
     "malformed Leases"),
    (pickle.dumps((p.MESSAGES.index(p.Outcomes), (map(operator.itemgetter("k"), [{}]),))),
     "malformed Outcomes"),
    (pickle.dumps(p.Stop()), "unexpected message type Stop .sent by another version"),
])
def test_anything_else_is_a_protocol_error_naming_the_problem(data: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        p.decode(data)
