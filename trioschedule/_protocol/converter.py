"""The one converter between message classes and JSON-ready values.

Decoding is strict: unknown fields are refused (``forbid_extra_keys``), and a
JSON value of the wrong type is refused instead of coerced (cattrs would turn
``5`` into ``"5"`` or iterate a string into a tuple).  Fields equal to their
default are left out when encoding.  Messages are told apart by their
``type`` tag through cattrs' tagged-union strategy.

The per-task records and the frames that carry them use the hand-written
hooks of :mod:`.fast_hooks`; ``make_converter(fast=False)`` leaves them out,
so that the tests can check the two against each other.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import cattrs
from cattrs.strategies import configure_tagged_union

from . import fast_hooks
from .schema import AnyMessage

__all__ = ["converter", "make_converter"]


def _strict(kind: type, name: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        raise TypeError(f"expected {name}, got {type(value).__name__}")

    return hook


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _tag(cls: Any) -> str:
    return cls.TYPE  # type: ignore[no-any-return]


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _tuples_from_arrays(converter: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """A hook factory for ``tuple[X, ...]`` that takes JSON arrays only."""

    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        item = typing.get_args(tp)[0]
        structure_item = converter.get_structure_hook(item)

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, list):  # cattrs would iterate a string or an object
                raise TypeError(f"expected an array, got {type(value).__name__}")
            return tuple([structure_item(v, item) for v in value])

        return hook

    return factory


def make_converter(*, fast: bool = True) -> cattrs.Converter:
    """The converter; ``fast=False`` leaves out the hand-written per-task hooks (the tests compare the two)."""
    converter = cattrs.Converter(forbid_extra_keys=True, omit_if_default=True)
    # JSON types pass through unchanged but are checked.
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(float, _strict_float)
    # Task arguments and results stay plain JSON values: no copy, only a check.
    converter.register_structure_hook_func(lambda t: t == list[Any], _strict(list, "an array"))
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _strict(dict, "an object"))
    converter.register_structure_hook_factory(_is_tuple, _tuples_from_arrays(converter))
    if fast:
        fast_hooks.register(converter)
    configure_tagged_union(AnyMessage, converter, tag_name="type", tag_generator=_tag)
    return converter


#: The converter every encode and decode goes through.
converter = make_converter()
