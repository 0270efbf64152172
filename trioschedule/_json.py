"""One home for the JSON encoder that frames and the journal use.

``json.dumps`` builds a new C encoder on every call; these are built once.
Both produce compact text with UTF-8 kept as is and refuse NaN and the
infinities, which JSON does not have and other languages' decoders reject.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["json_encoder"]


def _refuse(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_encoder(*, check_circular: bool = False) -> Callable[[Any], str]:
    """A ``dumps(obj) -> str``, built once.

    Without ``check_circular`` the encoder holds no state between calls, so
    one may be shared by every caller on a thread (wire messages are trees
    built by our own code).  With it, the circular-reference markers belong
    to the encoder: build one per thread, as the journal's writer does for
    values that came from users.
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), check_circular=check_circular, allow_nan=False
        ).encode
    markers: dict[int, Any] | None = {} if check_circular else None
    encode = make(markers, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join
    if markers is None:

        def dumps(obj: Any) -> str:
            return join(encode(obj, 0))

        return dumps

    def dumps_checked(obj: Any) -> str:
        try:
            return join(encode(obj, 0))
        except BaseException:
            markers.clear()  # an error leaves the circularity check's markers behind
            raise

    return dumps_checked
