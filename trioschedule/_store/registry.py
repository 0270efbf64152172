"""Stores by URL scheme: ``memory:``, ``sqlite:PATH``, ``postgresql://...``, and whatever is registered next.

``Dispatcher(store=...)`` and ``--store`` take a string; :func:`open_store`
turns it into a :class:`~.base.Store`.  A new kind of store plugs in here and
nowhere else: ``register_scheme("postgresql", factory, usage=...)``.  The
implementations are imported when a URL names them, so that the interface
(:mod:`.base`) never imports an implementation and a dispatcher that keeps
tasks in memory never loads SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .base import MemoryStore, Store

__all__ = ["open_store", "register_scheme", "schemes"]

#: Makes a store from what follows ``SCHEME:`` in its URL.
StoreFactory = Callable[[str], Store]


@attrs.frozen
class _Scheme:
    factory: StoreFactory
    usage: str  # how the URL is written, for error messages and --help


_SCHEMES: dict[str, _Scheme] = {}


def register_scheme(scheme: str, factory: StoreFactory, *, usage: str | None = None) -> None:
    """Make ``open_store("SCHEME:REST")`` return ``factory("REST")``.

    ``usage`` shows how such a URL is written (``"sqlite:PATH"``) in the
    message for an unknown scheme.  Registering a scheme again replaces it.
    """
    if not scheme or ":" in scheme or scheme != scheme.lower():
        raise ValueError(f"a store scheme is a lower-case name without ':', not {scheme!r}")
    _SCHEMES[scheme] = _Scheme(factory, usage or f"{scheme}:...")


def schemes() -> dict[str, str]:
    """Each registered scheme and how its URL is written, in registration order."""
    return {name: entry.usage for name, entry in _SCHEMES.items()}


def open_store(spec: str | Store | None) -> Store:
    """A store from a URL (``memory:``, ``sqlite:PATH``, ...), an instance (as it is), or None (memory)."""
    if spec is None:
        return MemoryStore()
    if isinstance(spec, Store):
        return spec
    scheme, colon, rest = spec.partition(":")
    entry = _SCHEMES.get(scheme) if colon or spec == "memory" else None
    if entry is None:
        known = ", ".join(repr(usage) for usage in schemes().values())
        raise ValueError(f"unknown store {spec!r}: use one of {known}")
    return entry.factory(rest)


def _memory(rest: str) -> Store:
    if rest:
        raise ValueError(f"unknown store 'memory:{rest}': 'memory:' takes nothing after the colon")
    return MemoryStore()


def _sqlite(path: str) -> Store:
    from .sqlite import SQLiteStore

    return SQLiteStore(path)


def _postgresql(rest: str) -> Store:
    if not rest.startswith("//"):
        raise ValueError(f"unknown store 'postgresql:{rest}': write it 'postgresql://USER@HOST:PORT/DB'")
    try:
        from .postgresql import PostgreSQLStore
    except ImportError as exc:  # psycopg is an optional dependency
        raise ValueError(
            f"the postgresql store needs psycopg 3 ({exc}): pip install 'trioschedule[postgresql]'"
        ) from exc
    return PostgreSQLStore("postgresql:" + rest)


register_scheme("memory", _memory, usage="memory:")
register_scheme("sqlite", _sqlite, usage="sqlite:PATH")
register_scheme("postgresql", _postgresql, usage="postgresql://USER@HOST:PORT/DB")
