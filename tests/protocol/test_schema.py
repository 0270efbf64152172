"""The message classes: stable unique tags, frozen and keyword-only."""

from __future__ import annotations

import typing

import attrs
import pytest

from trioschedule._protocol import messages as m


def test_tags_are_unique_and_complete() -> None:
    tags = [cls.TYPE for cls in m.MESSAGE_TYPES]
    assert len(tags) == len(set(tags)) == len(m.TAGS)
    assert set(typing.get_args(m.AnyMessage)) == set(m.MESSAGE_TYPES)


def test_statuses() -> None:
    assert m.STATUSES == ("ok", "error", "cancelled", "timeout", "lost", "unknown")


def test_messages_are_frozen_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        m.Cancel("x")  # type: ignore[misc]
    cancel = m.Cancel(id="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cancel.id = "y"  # type: ignore[misc]
