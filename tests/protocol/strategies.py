"""Hypothesis strategies for protocol messages, derived from the attrs classes themselves.

A field added to a message is covered by every property that uses them
without touching the tests.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

import attrs
from hypothesis import strategies as st

from trioschedule._protocol import messages as m

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of the annotated type ``tp``, as the messages use them."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return json_values
    if tp is type(None):
        return st.none()
    if tp is str:
        return st.text(max_size=20)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers()
    if tp is float:
        return finite_floats
    if origin in (Union, types.UnionType):
        return st.one_of(*map(strategy_for, args))
    if origin is tuple:
        assert args[1] is Ellipsis, tp
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=3)
    if attrs.has(tp):
        return builds(tp)
    raise AssertionError(f"no strategy for {tp!r}: teach strategy_for about it")


def builds(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{field.name: strategy_for(hints[field.name]) for field in attrs.fields(cls)})


all_messages = st.one_of(*(builds(cls) for cls in m.MESSAGE_TYPES))
FIELD_NAMES = sorted({field.name for cls in m.MESSAGE_TYPES for field in attrs.fields(cls)})
