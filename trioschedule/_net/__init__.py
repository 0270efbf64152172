"""Networking: the sans-IO protocol (``_protocol``) carried over trio streams.

- ``connection.py``: :class:`Connection`, one stream's reader, writer and
  heartbeat; every stream failure becomes one :class:`ConnectionClosed`.
- ``peerconn.py``: the peer's side: connect, handshake, and
  :func:`stay_connected`, the reconnect loop workers and clients share.
- ``splitting.py``: :func:`send_split`, halving a batch whose frame is refused.
- ``security.py``: TLS contexts, tokens, and the warning for exposed addresses.
"""
