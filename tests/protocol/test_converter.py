"""The hand-written hooks for per-task records agree with cattrs' generated ones.

TaskSpec, Outcome and Submission are encoded and decoded once per task, and
Run, Results, Outcomes and Submit once per batch of them, so
trioschedule._protocol.messages registers faster hooks for them and calls each class's
hook directly instead of through the tagged union.  They must not change a
single byte on the wire, and must refuse exactly what the generic hooks refuse.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cattrs.errors import BaseValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from trioschedule._errors import RemoteProtocolError
from trioschedule._json import json_encoder
from trioschedule._protocol import messages as m
from trioschedule._protocol.converter import make_converter

GENERIC = make_converter(fast=False)
_dumps = json_encoder()
FAST = m.converter

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ids = st.text(min_size=1, max_size=12)
errors = st.none() | st.builds(
    m.RemoteError, type=st.text(max_size=8), message=st.text(max_size=8), traceback=st.text(max_size=8),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e6),
)
specs = st.builds(
    m.TaskSpec, id=ids, name=ids, args=st.lists(json_values, max_size=3),
    kwargs=st.dictionaries(st.text(max_size=5), json_values, max_size=2), attempt=st.integers(0, 5),
    timeout=st.none() | st.floats(0, 1e6),
)  # fmt: skip
outcomes = st.builds(
    m.Outcome, id=ids, status=st.sampled_from(m.STATUSES), attempt=st.integers(0, 5), value=json_values,
    error=errors, reason=st.none() | st.text(max_size=8),
)  # fmt: skip
submissions = st.builds(
    m.Submission, id=ids, name=ids, args=st.lists(json_values, max_size=3),
    kwargs=st.dictionaries(st.text(max_size=5), json_values, max_size=2), timeout=st.none() | st.floats(0, 1e6),
    retries=st.none() | st.integers(0, 5), delay=st.none() | st.floats(0, 1e6), priority=st.integers(-5, 5),
)  # fmt: skip
records = st.one_of(specs, outcomes, submissions)
strings = st.lists(st.text(max_size=6), max_size=3).map(tuple)
frames = st.one_of(
    st.builds(m.Run, tasks=st.lists(specs, max_size=3).map(tuple), ack=st.integers(0, 9)),
    st.builds(m.Results, seq=st.integers(0, 9), started=strings, results=st.lists(outcomes, max_size=3).map(tuple)),
    st.builds(m.Outcomes, results=st.lists(outcomes, max_size=3).map(tuple)),
    st.builds(m.Submit, tasks=st.lists(submissions, max_size=3).map(tuple), wait=st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_same_wire_form_and_same_round_trip(record: Any) -> None:
    kind = type(record)
    fast, generic = FAST.unstructure(record, kind), GENERIC.unstructure(record, kind)
    assert fast == generic
    assert list(fast) == list(generic)  # the same field order, so the same bytes
    assert FAST.structure(generic, kind) == GENERIC.structure(generic, kind) == record


def generic_encode(message: Any) -> bytes:
    return _dumps(GENERIC.unstructure(message, m.AnyMessage)).encode()


@settings(max_examples=300, deadline=None)
@given(frames)
def test_frames_encode_to_the_same_bytes_and_decode_back(message: Any) -> None:
    payload = m.encode(message)
    assert payload == generic_encode(message)
    assert m.decode(payload) == GENERIC.structure(json.loads(payload), m.AnyMessage) == message


BAD_FRAMES = [
    {"type": "run", "tasks": {}},
    {"type": "run", "tasks": [{"id": "a"}]},
    {"type": "run", "ack": "1"},
    {"type": "run", "extra": 1},
    {"type": "results"},
    {"type": "results", "seq": 1, "started": "a"},
    {"type": "results", "seq": 1, "started": [1]},
    {"type": "results", "seq": 1, "results": [{"id": "a"}]},
    {"type": "results", "seq": True},
    {"type": "outcomes"},
    {"type": "outcomes", "results": {"id": "a", "status": "ok"}},
    {"type": "submit"},
    {"type": "submit", "tasks": [], "wait": 1},
    {"type": "submit", "tasks": [{"id": "a"}]},
]


#: How a cattrs converter refuses a value: a validation error, or the TypeError/AttributeError of a hook
#: given the wrong shape.  Anything else (a KeyError, say) would be a bug in a hook.
REFUSALS = (TypeError, ValueError, AttributeError, BaseValidationError)


@pytest.mark.parametrize("obj", BAD_FRAMES, ids=lambda obj: json.dumps(obj))
def test_frames_refuse_what_the_generic_converter_refuses(obj: dict[str, Any]) -> None:
    with pytest.raises(REFUSALS):
        GENERIC.structure(obj, m.AnyMessage)
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(json.dumps(obj).encode())
    assert info.value.code == "bad-message"


BAD = [
    (m.TaskSpec, {"id": "a"}),
    (m.TaskSpec, {"id": "a", "name": "n", "extra": 1}),
    (m.TaskSpec, {"id": 1, "name": "n"}),
    (m.TaskSpec, {"id": "a", "name": "n", "args": "abc"}),
    (m.TaskSpec, {"id": "a", "name": "n", "kwargs": []}),
    (m.TaskSpec, {"id": "a", "name": "n", "attempt": True}),
    (m.TaskSpec, {"id": "a", "name": "n", "timeout": "5"}),
    (m.Outcome, {"id": "a"}),
    (m.Outcome, {"id": "a", "status": "ok", "error": {"type": 1, "message": "m"}}),
    (m.Outcome, {"id": "a", "status": "ok", "reason": 5}),
    (m.Outcome, [1, 2]),
    (m.Submission, {"id": "a", "name": "n", "priority": 1.5}),
    (m.Submission, {"id": "a", "name": "n", "retries": "3"}),
    (m.Submission, {"id": "a", "name": "n", "delay": False}),
]


@pytest.mark.parametrize(("kind", "value"), BAD)
def test_both_refuse_the_same_bad_input(kind: type, value: Any) -> None:
    with pytest.raises(REFUSALS):
        GENERIC.structure(value, kind)
    with pytest.raises(REFUSALS):
        FAST.structure(value, kind)
