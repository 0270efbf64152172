"""send_split: a batch too large (or with a bad value) for one frame is halved until each part goes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioschedule._errors import ConnectionClosed, LocalProtocolError
from trioschedule._net.splitting import send_split


def frames(limit: int, bad: frozenset[int] = frozenset()):
    """A ``send`` that refuses a frame of more than ``limit`` items, or one holding a ``bad`` item."""
    sent: list[list[int]] = []

    def send(items: list[int]) -> None:
        if any(item in bad for item in items):
            raise LocalProtocolError("not JSON")
        if len(items) > limit:
            raise LocalProtocolError("frame too large")
        sent.append(list(items))

    return sent, send


def test_a_batch_that_fits_goes_as_one_frame():
    sent, send = frames(limit=10)
    send_split(send, [1, 2, 3], lambda item, exc: None)
    assert sent == [[1, 2, 3]]


def test_a_batch_too_large_is_halved_until_each_part_fits_in_order():
    sent, send = frames(limit=3)
    send_split(send, list(range(10)), lambda item, exc: None)
    assert [item for part in sent for item in part] == list(range(10))
    assert all(len(part) <= 3 for part in sent)
    assert sent == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]


def test_an_item_that_cannot_go_even_alone_is_unsendable_and_the_rest_still_goes():
    sent, send = frames(limit=100, bad=frozenset({4}))
    unsendable: list[tuple[int, Exception]] = []
    send_split(send, list(range(8)), lambda item, exc: unsendable.append((item, exc)))
    assert [item for part in sent for item in part] == [0, 1, 2, 3, 5, 6, 7]
    assert [item for item, _ in unsendable] == [4]
    assert isinstance(unsendable[0][1], LocalProtocolError) and "not JSON" in str(unsendable[0][1])


def test_a_closed_connection_is_left_to_its_reader():
    def send(items: list[int]) -> None:
        raise ConnectionClosed("peer closed the connection")

    unsendable: list[int] = []
    send_split(send, [1, 2, 3], lambda item, exc: unsendable.append(item))
    assert unsendable == []


@given(
    items=st.lists(st.integers(0, 50), max_size=60, unique=True),
    limit=st.integers(1, 20),
    bad=st.frozensets(st.integers(0, 50)),
)
def test_every_item_is_sent_once_in_order_or_reported(items, limit, bad):
    sent, send = frames(limit, bad)
    unsendable: list[int] = []
    send_split(send, items, lambda item, exc: unsendable.append(item))
    assert [item for part in sent for item in part] == [item for item in items if item not in bad]
    assert unsendable == [item for item in items if item in bad]
    assert all(len(part) <= limit for part in sent)
    assert all(sent) or sent == [[]]  # no empty part, unless the batch was empty (a frame with only ``started``)
