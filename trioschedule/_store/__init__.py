"""Stores: where a dispatcher journals its tasks.

``base`` is the interface (it imports no implementation), ``registry`` picks a
store by URL scheme, ``sqlite/`` is the durable store.  docs/STORE.md has the
contract and the design.
"""
