"""Messages to payload bytes and back: the only way in or out of the wire format.

:func:`encode` turns a message into compact UTF-8 JSON with its ``type`` tag
last; :func:`decode` parses one payload into a message.  Decoding is strict,
and every failure is a :class:`RemoteProtocolError` with a code, so a peer's
garbage can never raise anything else.  It also refuses what the encoder
could not send again (numbers that overflow a double, lone surrogate escapes,
nesting deeper than :data:`MAX_DEPTH`): otherwise a value relayed from one
peer to another would fail on the way out.

Both go through the one converter (:mod:`.converter`), calling each class's
hook directly rather than through the tagged union's dispatch.
:func:`encode_run` sends tasks already in wire form (:func:`.fast_hooks.spec_payload`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import cattrs

from .._errors import LocalProtocolError, RemoteProtocolError
from .._json import json_encoder
from .converter import converter
from .schema import MESSAGE_TYPES, Run

__all__ = ["MAX_DEPTH", "decode", "encode", "encode_run"]

MAX_DEPTH = 100  # arrays/objects; deeper values are refused, so whatever decodes can be encoded again

# Straight to each class's hook by tag (decoding) or by class (encoding): the
# same hooks the tagged union calls, without its dispatch and dict copy.
_STRUCTURE_BY_TAG: dict[str, tuple[Any, type]] = {
    cls.TYPE: (converter.get_structure_hook(cls), cls) for cls in MESSAGE_TYPES
}
_UNSTRUCTURE_BY_CLASS: dict[type, Any] = {cls: converter.get_unstructure_hook(cls) for cls in MESSAGE_TYPES}

_dumps = json_encoder()  # no circularity check: messages are trees built by our own code


# ---------------------------------------------------------------- encoding
def encode(message: Any) -> bytes:
    """The JSON payload for ``message`` (without the frame header).

    Raises :class:`LocalProtocolError` if a value in it is not JSON (a task
    argument or result that is a set, a datetime, NaN...).
    """
    unstructure = _UNSTRUCTURE_BY_CLASS.get(type(message))
    if unstructure is None:
        raise LocalProtocolError(f"{type(message).__name__} is not a protocol message", code="not-a-message")
    try:
        obj = unstructure(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(type(message), exc) from exc
    obj["type"] = message.TYPE
    return _dump(obj, type(message))


def encode_run(specs: list[dict[str, Any]], ack: int) -> bytes:
    """``encode(Run(tasks=..., ack=ack))`` for tasks already in wire form (see :func:`.fast_hooks.spec_payload`)."""
    obj: dict[str, Any] = {}
    if specs:
        obj["tasks"] = specs
    if ack != 0:
        obj["ack"] = ack
    obj["type"] = Run.TYPE
    return _dump(obj, Run)


def _dump(obj: dict[str, Any], kind: type) -> bytes:
    try:
        return _dumps(obj).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(kind, exc) from exc


def _not_json(kind: type, exc: Exception) -> LocalProtocolError:
    return LocalProtocolError(
        f"cannot encode {kind.__name__} as JSON: {exc}; "
        "task arguments, results and messages must be JSON values (str, int, float, bool, None, list, dict)",
        code="not-json",
    )


# ---------------------------------------------------------------- decoding
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:64]!r} appears twice in one object")
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# The handshake's decoder also refuses a repeated key: '"role":"client","role":"admin"'
# must not read one way here and another way in a filter in front of us.  After
# the handshake the check would cost about half of the parsing time of every
# frame, and a repeated key can only confuse the authenticated peer that sent it.
_strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float,
                                   object_pairs_hook=_no_repeated_keys)  # fmt: skip
_loads = _decoder.decode
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # set in JSONDecoder.__init__, not declared
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode(payload: bytes, *, repeated_keys: bool = True) -> Any:
    """Parse one payload into a message, or raise :class:`RemoteProtocolError`.

    ``repeated_keys=False`` refuses an object that repeats a key (``bad-json``),
    at some cost: the handshake uses it (see ``_strict_decoder``).
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})", code="bad-utf8") from None
    try:
        # The C scanner straight away: JSONDecoder.decode() adds two regex
        # matches for surrounding whitespace, which our frames never have.
        # Anything else (whitespace, errors) takes decode() for its messages.
        if not repeated_keys:
            obj = _strict_decoder.decode(text)
        else:
            try:
                obj, end = _scan_once(text, 0)
            except (StopIteration, ValueError):
                end = -1
            if end != len(text):
                obj = _loads(text)
    except RecursionError:
        raise RemoteProtocolError("payload nests JSON too deeply", code="bad-json") from None
    except ValueError as exc:
        raise RemoteProtocolError(f"payload is not JSON: {exc}", code="bad-json") from None
    # Refuse what could not be sent again (see the module docstring).
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(payload):
        raise RemoteProtocolError(f"payload nests JSON more than {MAX_DEPTH} levels deep", code="bad-json")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            _dumps(obj).encode()
        except UnicodeEncodeError:
            raise RemoteProtocolError("payload has a string with an unpaired surrogate escape", code="bad-json") from None
    # A JSON object whose "type" names a message: structure it with that class's hook.
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"payload is JSON {type(obj).__name__}, not an object", code="bad-message")
    tag = obj.get("type")
    if not isinstance(tag, str):
        raise RemoteProtocolError('payload has no string "type" field', code="bad-message")
    entry = _STRUCTURE_BY_TAG.get(tag)
    if entry is None:
        raise RemoteProtocolError(f"unknown message type {tag[:64]!r}", code="unknown-message")
    del obj["type"]
    structure, cls = entry
    try:
        return structure(obj, cls)
    except RecursionError:
        raise RemoteProtocolError("payload nests JSON too deeply", code="bad-json") from None
    except Exception as exc:  # noqa: BLE001 - any field error is the peer's; cattrs raises exception groups
        raise RemoteProtocolError(f"invalid {tag!r} message: {_describe(exc)}", code="bad-message") from None


def _describe(exc: BaseException) -> str:
    """Flatten a cattrs validation error into one line naming the fields."""
    try:
        notes = cattrs.transform_error(exc)
    except Exception:  # noqa: BLE001 - a description must never fail the refusal it describes
        notes = [str(exc)]
    return "; ".join(notes)[:500]


# ------------------------------------------------------------- depth check
_BRACKETS_AND_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')  # translate() deletes the rest
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")  # balanced either way, so the depth is the same
_QUOTED = re.compile(rb'"[^"]*"')


def _too_deep(payload: bytes) -> bool:
    """True if the JSON in ``payload`` (already known to parse) nests arrays/objects more than MAX_DEPTH deep.

    Runs at C speed, with no Python step per character or per value:

    1. drop escaped backslashes, then escaped quotes (left to right, as JSON
       pairs them), so every quote left opens or closes a string;
    2. keep only brackets and quotes, braces turned into brackets;
    3. drop every ``""`` pair: either an empty string, or the end of one
       string and the start of the next with nothing but deleted characters
       between them, which merges two strings into one; either way quotes
       still pair up in order, and what was inside a string stays inside;
    4. drop what is left inside quotes (strings that contain brackets: rare);
    5. strip innermost ``[]`` pairs, one nesting level per pass.  Valid JSON
       has balanced brackets outside strings, so the skeleton is empty after
       ``k`` passes exactly when the depth is at most ``k``.
    """
    if b"\\" in payload:
        payload = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = payload.translate(_OBJECTS_AS_ARRAYS, _BRACKETS_AND_QUOTES).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _QUOTED.sub(b"", skeleton)
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return bool(skeleton)
