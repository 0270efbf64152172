"""The protocol core: frames, messages and the legal order of both, with no I/O.

* :mod:`.framing`: length-prefixed frames, decoded incrementally;
* :mod:`.messages`: every message and constant, and ``encode``/``decode``, in
  one namespace (defined in :mod:`.schema`, :mod:`.converter`,
  :mod:`.fast_hooks` and :mod:`.codec`);
* :mod:`.connection`: one side of one connection as a state machine whose
  legal transitions are one table; :mod:`.auth`: the handshake's proofs.

Nothing here imports trio (tests/protocol/test_package.py checks): bytes go
in, messages come out, and the layers above do the reading and writing.
"""
