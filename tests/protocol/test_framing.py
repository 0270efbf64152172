"""The length-prefixed framing, driven synchronously (no I/O).

The frame format is Workerman's ``Frame`` protocol: a 4-byte unsigned
big-endian length that counts the header itself, then the payload.
"""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioschedule._errors import LocalProtocolError, RemoteProtocolError
from trioschedule._protocol.framing import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameDecoder, encode_frame

payloads = st.lists(st.binary(max_size=300), max_size=8)


def header(length: int) -> bytes:
    return struct.pack(">I", length)


def feed_all(chunks: list[bytes], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[bytes]:
    decoder = FrameDecoder(max_frame_size)
    out = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(decoder.frames())
    return out


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------- encoding
def test_empty_frame_is_just_its_header() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x04"
    assert HEADER_SIZE == 4


def test_length_counts_the_header_big_endian() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x07abc"
    assert encode_frame(b"x" * 300) == b"\x00\x00\x01\x30" + b"x" * 300


def test_default_max_frame_size_is_10_mib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 10 * 1024 * 1024


def test_encode_oversized_payload_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 97, max_frame_size=100)
    assert info.value.code == "frame-too-large"
    assert "max_frame_size" in str(info.value)  # says what to do


def test_encode_payload_exactly_at_the_limit() -> None:
    frame = encode_frame(b"x" * 96, max_frame_size=100)
    assert len(frame) == 100
    assert feed_all([frame], max_frame_size=100) == [b"x" * 96]


def test_encode_default_limit() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(bytes(DEFAULT_MAX_FRAME_SIZE - HEADER_SIZE + 1))
    assert len(encode_frame(bytes(DEFAULT_MAX_FRAME_SIZE - HEADER_SIZE))) == DEFAULT_MAX_FRAME_SIZE


def test_decoder_refuses_a_maximum_below_the_header() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(3)


# ---------------------------------------------------------------- decoding
def test_empty_frame_decodes_to_empty_payload() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x04")
    assert decoder.next_frame() == b""
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_nothing_until_the_frame_is_complete() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    for byte in one_byte_at_a_time(frame[:-1]):
        decoder.receive_data(byte)
        assert decoder.next_frame() is None
    decoder.receive_data(frame[-1:])
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_round_trip(frames: list[bytes]) -> None:
    assert feed_all([b"".join(encode_frame(p) for p in frames)]) == frames


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_byte_at_a_time_equals_all_at_once(frames: list[bytes]) -> None:
    data = b"".join(encode_frame(p) for p in frames)
    assert feed_all(one_byte_at_a_time(data)) == feed_all([data]) == frames


@settings(max_examples=200, deadline=None)
@given(payloads, st.data())
def test_any_split_gives_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    assert feed_all(chunks) == frames


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"a") + encode_frame(b"") + encode_frame(b"ccc") + b"\x00\x00")
    assert decoder.frames() == [b"a", b"", b"ccc"]
    assert decoder.buffered == 2
    decoder.receive_data(b"\x00\x06zz")
    assert decoder.frames() == [b"zz"]
    assert decoder.buffered == 0


def test_frames_taken_one_by_one_between_receives() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"one") + encode_frame(b"two")[:5])
    assert decoder.next_frame() == b"one"
    assert decoder.buffered == 5
    decoder.receive_data(encode_frame(b"two")[5:] + encode_frame(b"three"))
    assert decoder.next_frame() == b"two"
    assert decoder.next_frame() == b"three"
    assert decoder.next_frame() is None


def test_frame_exactly_at_the_decoder_limit() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    decoder.receive_data(encode_frame(b"x" * 12))
    assert decoder.next_frame() == b"x" * 12


# ------------------------------------------------------------ bad lengths
BAD_LENGTHS = [
    (0, "bad-length"),
    (1, "bad-length"),
    (2, "bad-length"),
    (3, "bad-length"),
    (DEFAULT_MAX_FRAME_SIZE + 1, "frame-too-large"),
    (0x7FFFFFFF, "frame-too-large"),
    (0xFFFFFFFF, "frame-too-large"),
]


@pytest.mark.parametrize(("length", "code"), BAD_LENGTHS)
def test_bad_length_refused_when_the_header_completes(length: int, code: str) -> None:
    decoder = FrameDecoder()
    head = header(length)
    for byte in one_byte_at_a_time(head[:3]):
        decoder.receive_data(byte)  # not yet a complete header: nothing to judge
        assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(head[3:])  # the 4th byte: refused before any payload
    assert info.value.code == code
    assert str(length) in str(info.value)


@pytest.mark.parametrize(("length", "code"), BAD_LENGTHS)
def test_bad_length_in_one_chunk(length: int, code: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(header(length))
    assert info.value.code == code


@pytest.mark.parametrize(("length", "code"), BAD_LENGTHS)
def test_decoder_stays_failed(length: int, code: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(header(length) + b"payload")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_frame()
        assert info.value.code == code
        with pytest.raises(RemoteProtocolError) as info:
            decoder.receive_data(encode_frame(b"a perfectly good frame"))
        assert info.value.code == code
    assert decoder.buffered == 0  # nothing kept for a dead connection


def test_bad_length_after_good_frames() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"good"))
    assert decoder.next_frame() == b"good"
    decoder.receive_data(header(2)[:2])
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(header(2)[2:])
    assert info.value.code == "bad-length"


def test_good_frames_before_a_bad_header_in_the_same_chunk_are_delivered() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"first") + header(1) + b"junk")
    assert decoder.next_frame() == b"first"
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == "bad-length"


def test_custom_maximum() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(header(101))
    assert info.value.code == "frame-too-large"
    assert "100" in str(info.value)


# ------------------------------------------------------------------ memory
def test_no_memory_reserved_for_a_declared_length() -> None:
    """A header that announces the maximum makes us hold only what was sent."""
    decoder = FrameDecoder()
    decoder.receive_data(header(DEFAULT_MAX_FRAME_SIZE))
    fed = HEADER_SIZE
    for _ in range(100):
        decoder.receive_data(b"0123456789")
        fed += 10
        assert decoder.next_frame() is None
        assert decoder.buffered == fed
    # The buffer's allocation follows what was fed, not the declared 10 MiB.
    assert sys.getsizeof(decoder._buffer) < 64 * 1024


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=20))
def test_buffer_never_exceeds_what_was_fed(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_size=64)
    fed = 0
    for chunk in chunks:
        try:
            decoder.receive_data(chunk)
            fed += len(chunk)
            while (frame := decoder.next_frame()) is not None:
                fed -= len(frame) + HEADER_SIZE
        except RemoteProtocolError as exc:
            assert exc.code in ("bad-length", "frame-too-large")
            assert decoder.buffered == 0
            return
        assert 0 <= decoder.buffered == fed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 16))
def test_random_bytes_parse_or_raise_remote_error(data: bytes, step: int) -> None:
    decoder = FrameDecoder(max_frame_size=128)
    try:
        for i in range(0, len(data), step):
            decoder.receive_data(data[i : i + step])
            for frame in decoder.frames():
                assert len(frame) <= 128 - HEADER_SIZE
    except RemoteProtocolError as exc:
        assert exc.code in ("bad-length", "frame-too-large")
