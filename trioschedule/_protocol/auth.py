"""The shared-secret handshake's proofs: nonces, HMACs, and how to compare them.

When a secret is configured, the dispatcher answers a peer's Hello (which
carries the peer's nonce) with a Challenge (its own nonce).  The peer proves
it knows the secret in Auth; the dispatcher proves it too in Welcome, so a
peer cannot be fooled by an impostor.  Each proof is an HMAC-SHA256 over a
label naming its direction, the peer's role and both nonces, so no proof can
be replayed in another direction, for another role or on another connection.
docs/PROTOCOL.md has a worked example, which the tests check.

These are pure functions: :class:`.connection.ProtocolConnection` only
checks that Challenge, Auth and Welcome come in the right order; the
dispatcher and the peers compute and check the proofs with these.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["dispatcher_proof", "new_nonce", "peer_proof", "proofs_match"]


def new_nonce() -> str:
    """A fresh 128-bit random nonce, hex encoded."""
    return secrets.token_hex(16)


def _mac(secret: str, *parts: str) -> str:
    return hmac.new(secret.encode(), "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def peer_proof(secret: str, role: str, peer_nonce: str, dispatcher_nonce: str) -> str:
    """What a peer sends in :class:`Auth`: HMAC-SHA256 over both nonces and its role."""
    return _mac(secret, "trioschedule/1 peer", role, peer_nonce, dispatcher_nonce)


def dispatcher_proof(secret: str, role: str, peer_nonce: str, dispatcher_nonce: str) -> str:
    """What the dispatcher sends in :class:`Welcome`, so the peer knows it is the real one."""
    return _mac(secret, "trioschedule/1 dispatcher", role, peer_nonce, dispatcher_nonce)


def proofs_match(expected: str, received: str | None) -> bool:
    """Constant-time comparison of two proofs (``hmac.compare_digest``), so timing reveals nothing."""
    return received is not None and hmac.compare_digest(expected.encode(), received.encode())
