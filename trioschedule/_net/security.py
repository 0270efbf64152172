"""Shared secrets per role, TLS contexts, and the warning for an exposed dispatcher."""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

import attrs

from .._protocol.connection import ADMIN, CLIENT, WORKER

__all__ = ["Secrets", "client_ssl_context", "server_ssl_context", "token_from_env", "warn_if_exposed"]

TOKEN_ENV = "TRIOSCHEDULE_TOKEN"


@attrs.frozen(kw_only=True)
class Secrets:
    """The secret each role must prove it knows; ``None`` everywhere means no authentication.

    Built from one string (the same secret for every role, the simple
    default) or from a mapping ``{"worker": ..., "client": ..., "admin": ...}``.
    With a mapping, a role that has no secret is refused altogether: leaving
    a role out never opens it by accident.
    """

    worker: str | None = None
    client: str | None = None
    admin: str | None = None
    refuse_missing: bool = False

    @classmethod
    def from_token(cls, token: str | Mapping[str, str] | Secrets | None) -> Secrets:
        if isinstance(token, Secrets):
            return token
        if token is None or token == "":
            return cls()
        if isinstance(token, str):
            return cls(worker=token, client=token, admin=token)
        unknown = set(token) - {WORKER, CLIENT, ADMIN}
        if unknown:
            raise ValueError(f"token mapping has unknown roles {sorted(unknown)}; use worker, client, admin")
        return cls(worker=token.get(WORKER), client=token.get(CLIENT), admin=token.get(ADMIN), refuse_missing=True)

    @property
    def enabled(self) -> bool:
        return any((self.worker, self.client, self.admin))

    def for_role(self, role: str) -> str | None:
        """The secret for ``role``; raises if the role may not connect at all."""
        from .._errors import AuthenticationError

        secret = {WORKER: self.worker, CLIENT: self.client, ADMIN: self.admin}.get(role)
        if secret is None and self.refuse_missing:
            raise AuthenticationError(f"role {role!r} has no secret configured and may not connect")
        return secret


def token_from_env(token: str | None) -> str | None:
    """``token`` if given, else ``$TRIOSCHEDULE_TOKEN`` (empty means none)."""
    if token:
        return token
    return os.environ.get(TOKEN_ENV) or None


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(
    log: logging.Logger, host: str, secrets: Secrets, ssl_context: Any, *, exposes: str = "submit tasks and read results"
) -> None:
    """Log a warning when a dispatcher listens beyond loopback without a token or without TLS.

    ``exposes`` says what a stranger could do without the token (the HTTP
    endpoint passes its own).
    """
    if _is_loopback(host):
        return
    missing = [what for what, ok in (("a token", secrets.enabled), ("TLS", ssl_context is not None)) if not ok]
    if missing:
        log.warning(
            "listening on %s without %s: anyone who can reach this port can %s. "
            "Set --token/TRIOSCHEDULE_TOKEN and --tls-cert/--tls-key (see docs/SECURITY.md)",
            host or "all interfaces",
            " or ".join(missing),
            exposes if secrets.enabled is False else "read the traffic",
        )


def server_ssl_context(certfile: str, keyfile: str | None = None, *, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS server context; with ``client_ca`` peers must present a certificate it signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(
    cafile: str | None = None, *, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A TLS client context trusting ``cafile`` (system roots if None), with an optional client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
