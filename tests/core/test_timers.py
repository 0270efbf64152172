"""Timers: earliest first, ties in the order set, ``changed`` when a new earliest appears."""

from __future__ import annotations

import math

from trioschedule._core.timers import Timers


def test_fire_due_calls_what_is_due_earliest_first_and_keeps_the_rest():
    timers = Timers()
    fired: list[str] = []
    timers.at(5.0, fired.append, "five")
    timers.at(1.0, fired.append, "one")
    timers.at(3.0, fired.append, "three-a")
    timers.at(3.0, fired.append, "three-b")
    assert timers.next_deadline() == 1.0 and len(timers) == 4
    assert not timers.fire_due(0.5)
    assert timers.fire_due(3.0)
    assert fired == ["one", "three-a", "three-b"]
    assert timers.next_deadline() == 5.0 and len(timers) == 1
    assert timers.fire_due(100.0) and fired[-1] == "five"
    assert timers.next_deadline() == math.inf and not timers.fire_due(1e9)


def test_changed_only_when_a_timer_becomes_the_earliest():
    timers = Timers()
    assert not timers.changed
    timers.at(10.0, print, None)
    assert timers.changed
    timers.changed = False  # the shell looked
    timers.at(20.0, print, None)
    assert not timers.changed
    timers.at(10.0, print, None)  # a tie goes after the one set first: not earlier
    assert not timers.changed
    timers.at(9.0, print, None)
    assert timers.changed


def test_a_callback_may_set_timers_and_those_due_fire_in_the_same_call():
    timers = Timers()
    fired: list[float] = []

    def again(when: float) -> None:
        fired.append(when)
        if when < 3:
            timers.at(when + 1, again, when + 1)

    timers.at(1.0, again, 1.0)
    timers.fire_due(2.5)
    assert fired == [1.0, 2.0] and timers.next_deadline() == 3.0
