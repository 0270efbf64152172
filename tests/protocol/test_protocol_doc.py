"""docs/PROTOCOL.md agrees with the code, byte for byte.

Every ```frame block in the document holds the Python bytes literal of one
whole frame (header and payload).  Each must decode to exactly one message
and re-encode to the same bytes, every message type must have an example,
and the worked HMAC example must compute.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from trioschedule._protocol import messages as m
from trioschedule._protocol.connection import dispatcher_proof, peer_proof
from trioschedule._protocol.framing import FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```frame\n(.*?)^```$", DOC, flags=re.MULTILINE | re.DOTALL)

# Codes that never travel in an error frame (local errors and client-side rejections).
LOCAL_CODES = {"not-json", "duplicate", "connection"}


def frame_of(block: str) -> bytes:
    value = ast.literal_eval(block.strip())
    assert isinstance(value, bytes), f"a frame block must hold a bytes literal, got {type(value).__name__}"
    return value


def message_of(frame: bytes) -> Any:
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    [payload] = decoder.frames()
    assert decoder.buffered == 0, "the block holds more than one frame"
    return m.decode(payload)


def test_the_document_has_frame_examples() -> None:
    assert len(BLOCKS) >= len(m.MESSAGE_TYPES)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}" for i in range(len(BLOCKS))])
def test_example_is_byte_exact(block: str) -> None:
    frame = frame_of(block)
    message = message_of(frame)
    assert encode_frame(m.encode(message)) == frame


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}" for i in range(len(BLOCKS))])
def test_example_header_is_written_as_escapes(block: str) -> None:
    """Readers in other languages should not have to know that 0x4b prints as K."""
    assert re.fullmatch(r"b'(\\x[0-9a-f]{2}){4}\{.*\}'", block.strip(), flags=re.DOTALL), block[:40]


def test_every_message_type_has_an_example() -> None:
    shown = {type(message_of(frame_of(block))) for block in BLOCKS}
    assert set(m.MESSAGE_TYPES) - shown == set()


@pytest.mark.parametrize("cls", m.MESSAGE_TYPES, ids=lambda cls: cls.TYPE)
def test_every_message_type_is_described(cls: type) -> None:
    assert f"**`{cls.TYPE}`**" in DOC


def test_every_wire_error_code_is_documented() -> None:
    """Codes of RemoteProtocolError and of error frames sent directly, wherever the code raises them."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "trioschedule").rglob("*.py"))
    call = r"\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*?"  # an argument list, parentheses nested twice
    codes = set(re.findall(r"RemoteProtocolError" + call + r'code="([a-z0-9-]+)"', source))
    codes |= set(re.findall(r'(?:send_error|error_frame)\(\s*"([a-z0-9-]+)"', source))
    codes |= set(re.findall(r'self\._fail\(.*, "([a-z0-9-]+)"\)$', source, flags=re.MULTILINE))
    assert {"bad-length", "frame-too-large", "bad-json", "unexpected-message", "bad-role", "auth-failed"} <= codes
    missing = {code for code in codes - LOCAL_CODES if f"`{code}`" not in DOC}
    assert missing == set()


def test_every_status_is_documented() -> None:
    for status in m.STATUSES:
        assert f"| `{status}` |" in DOC


def test_worked_hmac_example() -> None:
    secret = re.search(r"with secret `([^`]+)`, role `worker`", DOC)
    peer_nonce = re.search(r"`Np = ([0-9a-f]{32})`", DOC)
    dispatcher_nonce = re.search(r"`Nd = ([0-9a-f]{32})`", DOC)
    p = re.search(r"^P = ([0-9a-f]{64})$", DOC, flags=re.MULTILINE)
    d = re.search(r"^D = ([0-9a-f]{64})$", DOC, flags=re.MULTILINE)
    assert secret and peer_nonce and dispatcher_nonce and p and d
    args = (secret[1], "worker", peer_nonce[1], dispatcher_nonce[1])
    assert peer_proof(*args) == p[1]
    assert dispatcher_proof(*args) == d[1]
    messages = [message_of(frame_of(block)) for block in BLOCKS]
    assert m.Hello(version=1, role="worker", name="w1", nonce=peer_nonce[1], tasks=("add",)) in messages
    assert m.Challenge(nonce=dispatcher_nonce[1]) in messages
    assert m.Auth(proof=p[1]) in messages
    assert any(isinstance(x, m.Welcome) and x.proof == d[1] for x in messages)


def test_framing_examples_in_the_text() -> None:
    assert "`00 00 00 04`" in DOC
    assert encode_frame(b"") == bytes.fromhex("00 00 00 04")
    assert "`00 00 00 07 61 62 63`" in DOC
    assert encode_frame(b"abc") == bytes.fromhex("00 00 00 07 61 62 63")
