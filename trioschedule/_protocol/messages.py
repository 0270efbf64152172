"""The protocol's vocabulary in one namespace: messages, constants, encode and decode.

The rest of trioschedule imports this module as ``m`` (``m.Run``,
``m.encode``, ``m.OK``...).  It defines nothing itself; each name lives in
the module that owns it:

* :mod:`.schema`: the message classes and the constants they carry;
* :mod:`.converter`: the one cattrs converter between classes and JSON-ready values;
* :mod:`.fast_hooks`: the converter's hand-written hooks for per-task records,
  and positional constructors for them (``new_spec``, ``new_outcome``...);
* :mod:`.codec`: :func:`encode` and :func:`decode` between messages and payload
  bytes, the only way in or out; every decoding failure is a
  :class:`RemoteProtocolError` with a code.

None of them imports trio; docs/PROTOCOL.md describes the same messages for
implementers in other languages, and the tests check that it agrees.
"""

from __future__ import annotations

from . import schema as _schema
from .codec import MAX_DEPTH, decode, encode, encode_run
from .converter import converter
from .fast_hooks import new_outcome, new_results, new_run, new_spec, new_submission, spec_payload
from .schema import *  # every message class and constant, as schema.__all__ lists them

__all__ = _schema.__all__ + [
    "MAX_DEPTH",
    "converter",
    "decode",
    "encode",
    "encode_run",
    "new_outcome",
    "new_results",
    "new_run",
    "new_spec",
    "new_submission",
    "spec_payload",
]

