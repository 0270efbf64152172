"""The positional constructors of the hot path build exactly what the keyword-only classes build.

(That the hand-written hooks agree with cattrs' generated ones, byte for byte
and refusal for refusal, is checked in tests/test_fast_hooks.py.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from trioschedule._protocol import fast_hooks
from trioschedule._protocol import messages as m

CONSTRUCTORS = [
    (fast_hooks.new_spec, m.TaskSpec),
    (fast_hooks.new_outcome, m.Outcome),
    (fast_hooks.new_submission, m.Submission),
    (fast_hooks.new_run, m.Run),
    (fast_hooks.new_results, m.Results),
]


@pytest.mark.parametrize(("new", "cls"), CONSTRUCTORS, ids=lambda v: getattr(v, "__name__", ""))
def test_positional_constructor_matches_the_class(new: Callable[..., Any], cls: type) -> None:
    fields = attrs.fields(cls)
    assert len(inspect.signature(new).parameters) == len(fields)
    values = [f"value of {field.name}" for field in fields]  # all different, so a swapped pair shows
    built = new(*values)
    assert type(built) is cls
    assert built == cls(**{field.name: value for field, value in zip(fields, values)})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(built, fields[0].name, "changed")


def test_the_messages_module_hands_out_the_same_constructors() -> None:
    for name in ("new_spec", "new_outcome", "new_submission", "new_run", "new_results", "spec_payload"):
        assert getattr(m, name) is getattr(fast_hooks, name)


def test_spec_payload_is_the_wire_form_of_a_task_spec() -> None:
    spec = m.TaskSpec(id="t", name="add", args=[1], kwargs={"k": 2}, attempt=3, timeout=1.5)
    assert fast_hooks.spec_payload("t", "add", [1], {"k": 2}, 3, 1.5) == m.converter.unstructure(spec)
    assert fast_hooks.spec_payload("t", "add", [], {}, 1, None) == {"id": "t", "name": "add"}
    assert m.encode_run([fast_hooks.spec_payload("t", "add", [1], {"k": 2}, 3, 1.5)], 4) == m.encode(
        m.Run(tasks=(spec,), ack=4)
    )
