"""Rotation: which dispatcher address a worker or client tries next, step by step (no I/O, no clock)."""

from __future__ import annotations

import pytest

from trioschedule._errors import ConnectionClosed, NotLeader
from trioschedule._net.addresses import Rotation, format_address, parse_address, peer_addresses
from trioschedule._net.peerconn import leader_of, round_error

A, B, C, X = ("10.0.0.1", 7311), ("10.0.0.2", 7311), ("10.0.0.3", 7311), ("10.0.0.9", 7399)
REFUSED = OSError("connection refused")


def standby(leader: str | None = None) -> NotLeader:
    return NotLeader("peer reported error not-leader: this dispatcher is a standby", leader=leader)


def walk(rotation: Rotation, *outcomes) -> list[tuple[tuple[str, int], bool]]:
    """Fail the current address with each outcome (an exception, or (exception, leader)); [(address, round over)]."""
    steps = []
    for outcome in outcomes:
        exc, leader = outcome if isinstance(outcome, tuple) else (outcome, None)
        address = rotation.current
        steps.append((address, rotation.failed(exc, leader)))
    return steps


def test_one_address_is_a_round_of_one_attempt():
    rotation = Rotation([A])
    assert walk(rotation, REFUSED, REFUSED) == [(A, True), (A, True)]


def test_the_list_is_tried_in_turn_and_the_round_ends_after_the_last():
    rotation = Rotation([A, B, C])
    assert walk(rotation, REFUSED, REFUSED, REFUSED, REFUSED) == [(A, False), (B, False), (C, True), (A, False)]


def test_a_redirect_is_tried_next_even_out_of_turn_and_then_the_round_goes_on():
    rotation = Rotation([A, B, C])
    # A names C: C next (not B), then B; the round ends once each was tried.
    assert walk(rotation, (standby("10.0.0.3:7311"), C), REFUSED, REFUSED) == [(A, False), (C, False), (B, True)]


def test_a_redirect_outside_the_list_is_followed_and_remembered_once_it_worked():
    rotation = Rotation([A, B])
    assert walk(rotation, (standby(), X)) == [(A, False)]
    assert rotation.current == X
    rotation.succeeded()
    rotation.lost()
    # Lost later: the list first (a standby there names the leader at once), the leader that worked last.
    assert walk(rotation, REFUSED, REFUSED, REFUSED) == [(A, False), (B, False), (X, True)]
    # It failed a whole round: forgotten, the list alone from now on.
    assert walk(rotation, REFUSED, REFUSED) == [(A, False), (B, True)]


def test_two_standbys_naming_each_other_cost_one_attempt_each_per_round():
    rotation = Rotation([A, B])
    to_b, to_a = (standby("10.0.0.2:7311"), B), (standby("10.0.0.1:7311"), A)
    assert walk(rotation, to_b, to_a) == [(A, False), (B, True)]
    assert walk(rotation, to_b, to_a) == [(A, False), (B, True)]


def test_redirects_per_round_are_capped():
    chain = [(f"10.1.0.{i}", 1) for i in range(10)]
    rotation = Rotation([A], max_redirects=3)
    steps = walk(rotation, *[(standby(format_address(c)), c) for c in chain[:5]])
    # A, then three redirects followed; the third redirect's target names a fourth: not followed, the
    # round is over.  The next round starts afresh: A's redirect is followed again.
    assert steps == [(A, False), (chain[0], False), (chain[1], False), (chain[2], True), (A, False)]
    assert rotation.current == chain[4]


def test_after_losing_the_leader_the_next_round_starts_with_the_next_address_and_tries_it_last():
    """A paused leader still accepts TCP connections: trying it first would cost the whole connect timeout."""
    rotation = Rotation([A, B, C])
    walk(rotation, REFUSED)
    assert rotation.current == B
    rotation.succeeded()
    rotation.lost()
    assert walk(rotation, REFUSED, REFUSED, REFUSED) == [(C, False), (A, False), (B, True)]
    # A standby there still names the old leader: followed at once.
    assert walk(rotation, (standby("10.0.0.2:7311"), B)) == [(C, False)]
    assert rotation.current == B


def test_the_round_keeps_its_failures_for_one_error():
    rotation = Rotation([A, B])
    walk(rotation, REFUSED, standby())
    failures = rotation.take_failures()
    assert [address for address, _ in failures] == [A, B] and rotation.take_failures() == []
    error = round_error(failures)
    assert isinstance(error, NotLeader)
    assert str(error) == ("no dispatcher at 10.0.0.1:7311, 10.0.0.2:7311 leads "
                          "(10.0.0.1:7311: connection refused; 10.0.0.2:7311: not-leader: no leader yet)")  # fmt: skip


def test_round_errors_say_it_once_when_every_address_says_the_same():
    assert str(round_error([(A, standby()), (B, standby())])) == (
        "no dispatcher at 10.0.0.1:7311, 10.0.0.2:7311 leads (not-leader: no leader yet)"
    )
    unreachable = round_error([(A, REFUSED), (B, REFUSED)])
    assert type(unreachable) is ConnectionClosed
    assert str(unreachable) == "cannot reach any dispatcher at 10.0.0.1:7311, 10.0.0.2:7311 (connection refused)"
    assert round_error([(A, REFUSED)]) is REFUSED  # one address: its own error, as before
    assert str(round_error([(A, standby())])) == "no dispatcher at 10.0.0.1:7311 leads (not-leader: no leader yet)"


def test_leader_of_reads_the_named_leader_and_ignores_what_does_not_parse():
    assert leader_of(standby("10.0.0.9:7399")) == X
    assert leader_of(standby("[::1]:7311")) == ("::1", 7311)
    assert leader_of(standby(None)) is None
    assert leader_of(standby("not an address")) is None
    assert leader_of(ConnectionClosed("reset", code="not-leader", leader="10.0.0.9:7399")) is None  # not a NotLeader


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:7311", ("127.0.0.1", 7311)), ("[::1]:7312", ("::1", 7312)), (" box:1 ", ("box", 1))],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected
    assert parse_address(format_address(expected)) == expected


@pytest.mark.parametrize("text", ["7311", ":7311", "box", "box:port", "box:70000"])
def test_parse_address_refuses(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_peer_addresses_take_strings_pairs_or_the_old_host_and_port():
    assert peer_addresses("h", 1, None) == [("h", 1)]
    assert peer_addresses("ignored", 1, ["a:1", ("b", 2), "a:1"]) == [("a", 1), ("b", 2)]
    assert peer_addresses("h", 1, "a:1,b:2") == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="at least one"):
        peer_addresses("h", 1, [])
