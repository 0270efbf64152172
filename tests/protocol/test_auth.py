"""The handshake's proofs: HMACs bound to direction, role and both nonces, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from trioschedule._protocol import auth, connection
from trioschedule._protocol.auth import dispatcher_proof, new_nonce, peer_proof, proofs_match
from trioschedule._protocol.connection import CLIENT, WORKER

SECRET = "s3cret"


def test_proof_construction() -> None:
    peer_nonce, dispatcher_nonce = "a" * 32, "b" * 32
    expected_peer = hmac.new(
        SECRET.encode(), f"trioschedule/1 peer\nworker\n{peer_nonce}\n{dispatcher_nonce}".encode(), hashlib.sha256
    ).hexdigest()
    expected_dispatcher = hmac.new(
        SECRET.encode(), f"trioschedule/1 dispatcher\nworker\n{peer_nonce}\n{dispatcher_nonce}".encode(), hashlib.sha256
    ).hexdigest()
    assert peer_proof(SECRET, WORKER, peer_nonce, dispatcher_nonce) == expected_peer
    assert dispatcher_proof(SECRET, WORKER, peer_nonce, dispatcher_nonce) == expected_dispatcher
    assert re.fullmatch("[0-9a-f]{64}", expected_peer)


def test_proofs_are_bound_to_direction_role_and_both_nonces() -> None:
    base = peer_proof(SECRET, WORKER, "p" * 32, "d" * 32)
    others = {
        dispatcher_proof(SECRET, WORKER, "p" * 32, "d" * 32),
        peer_proof(SECRET, CLIENT, "p" * 32, "d" * 32),
        peer_proof(SECRET, WORKER, "q" * 32, "d" * 32),
        peer_proof(SECRET, WORKER, "p" * 32, "e" * 32),
        peer_proof(SECRET, WORKER, "d" * 32, "p" * 32),
        peer_proof("other", WORKER, "p" * 32, "d" * 32),
    }
    assert base not in others and len(others) == 6


def test_proofs_match() -> None:
    proof = peer_proof(SECRET, WORKER, "p", "d")
    assert proofs_match(proof, proof)
    assert not proofs_match(proof, proof[:-1])
    assert not proofs_match(proof, proof.upper())
    assert not proofs_match(proof, None)
    assert not proofs_match(proof, "")


def test_nonces_are_32_hex_chars_and_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(re.fullmatch("[0-9a-f]{32}", nonce) for nonce in nonces)


def test_proofs_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    proof = peer_proof(SECRET, WORKER, "p", "d")
    assert proofs_match(proof, proof) and not proofs_match(proof, "x")
    assert calls == [(proof.encode(), proof.encode()), (proof.encode(), b"x")]
    assert not proofs_match(proof, None) and len(calls) == 2  # nothing to compare: no secret-dependent work


def test_connection_still_exports_the_proofs() -> None:
    """Callers import them from .connection, where they lived before .auth existed."""
    for name in auth.__all__:
        assert getattr(connection, name) is getattr(auth, name)
