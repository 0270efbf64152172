"""Length-prefixed framing, byte-compatible with Workerman's ``Frame`` protocol.

A frame is a 4-byte unsigned big-endian length that counts the 4 header bytes
too, followed by the payload: ``b"\\x00\\x00\\x00\\x04"`` is the empty frame.

This module is sans-IO: bytes go in through :meth:`FrameDecoder.receive_data`,
complete payloads come out of :meth:`FrameDecoder.next_frame`.  A declared
length is checked the moment its 4 header bytes arrive, before anything is
buffered for it, so a peer cannot make us reserve memory by lying.
"""

from __future__ import annotations

import struct

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

HEADER_SIZE = 4
DEFAULT_MAX_FRAME_SIZE = 10 * 1024 * 1024
_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Return ``payload`` with its header in front.

    Raises :class:`LocalProtocolError` if the frame would exceed
    ``max_frame_size``: the peer would refuse it, so refuse it here with a
    message that says what to do.
    """
    size = len(payload) + HEADER_SIZE
    if size > max_frame_size:
        raise LocalProtocolError(
            f"frame of {size} bytes exceeds the maximum frame size of {max_frame_size} bytes; "
            "send smaller arguments/results or raise max_frame_size on both sides",
            code="frame-too-large",
        )
    return _pack_header(size) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes, take complete payloads.

    Raises :class:`RemoteProtocolError` (code ``"bad-length"`` or
    ``"frame-too-large"``) as soon as a header declares an impossible length.
    After an error the decoder is unusable; the connection must be closed.
    """

    __slots__ = ("_buffer", "_error", "_position", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError("max_frame_size must be at least 4")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._position = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._position

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer (any amount, split anywhere)."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if self._position:
            del buffer[: self._position]
            self._position = 0
        buffer += data
        # Validate the next header as soon as it is complete, so the buffer for
        # an oversized frame never grows beyond what the peer already sent.
        if len(buffer) >= HEADER_SIZE:
            self._check_length(_unpack_header(buffer, 0)[0])

    def _check_length(self, size: int) -> None:
        if size < HEADER_SIZE:
            self._fail(f"frame declares length {size}, below the minimum of 4 (the length counts its own header)", "bad-length")
        if size > self.max_frame_size:
            self._fail(f"frame declares length {size}, above the maximum frame size of {self.max_frame_size} bytes", "frame-too-large")

    def _fail(self, message: str, code: str) -> None:
        self._error = RemoteProtocolError(message, code=code)
        self._buffer = bytearray()
        self._position = 0
        raise self._error

    def next_frame(self) -> bytes | None:
        """The next complete payload, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buffer, position = self._buffer, self._position
        available = len(buffer) - position
        if available < HEADER_SIZE:
            return None
        size = _unpack_header(buffer, position)[0]
        if size < HEADER_SIZE or size > self.max_frame_size:
            self._check_length(size)  # raises
        if available < size:
            return None
        payload = bytes(buffer[position + HEADER_SIZE : position + size])
        self._position = position + size
        if self._position == len(buffer):
            buffer.clear()
            self._position = 0
        return payload

    def frames(self) -> list[bytes]:
        """Every complete payload available now (possibly none)."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out
