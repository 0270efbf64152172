"""docs/PROTOCOL.md says what the code does about nulls, PHP's empty objects, welcome and Workerman (issue 13)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from trioschedule._errors import RemoteProtocolError
from trioschedule._protocol import messages as m

DOC = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
SECTION_2 = DOC[DOC.index("## 2. Payloads") : DOC.index("## 3. Roles")]
NESTED = {"TaskSpec": m.TaskSpec, "Submission": m.Submission, "Outcome": m.Outcome, "RemoteError": m.RemoteError,
          "Rejection": m.Rejection}  # fmt: skip


def documented_tables() -> list[tuple[type, str, str]]:
    """(class, field, documented type) for every field row of every table in section 5."""
    rows = []
    section_5 = DOC[DOC.index("## 5. Message reference") : DOC.index("## 6. Worker flow")]
    for chunk in re.split(r"^(?=\*\*)", section_5, flags=re.MULTILINE):
        found = re.match(r"\*\*`?([A-Za-z-]+)`?\*\*", chunk)
        table = re.search(r"^((?:\|.*\n)+)", chunk, flags=re.MULTILINE)
        cls = found and (NESTED.get(found.group(1)) or m.TAGS.get(found.group(1)))
        if not cls or table is None:
            continue
        table = table.group(1)
        for line in table.splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append((cls, cells[0].strip("`"), cells[1]))
    return rows


ROWS = documented_tables()


def test_the_tables_were_found() -> None:
    assert {cls for cls, _, _ in ROWS} >= {m.Hello, m.Welcome, m.TaskSpec, m.Outcome, m.Submission, m.Results}


def _payload(cls: type, field: str) -> dict[str, Any]:
    """A minimal valid payload for ``cls`` with ``field`` set to null."""
    required = {"version": 1, "role": "worker", "session": "s", "heartbeat": 1.0, "timeout": 1.0, "id": "t",
                "name": "n", "status": "ok", "type": "E", "message": "m", "code": "c", "seq": 1, "ids": [],
                "tasks": [], "results": [], "nonce": "n", "proof": "p", "grace": 1.0}  # fmt: skip
    names = {f.name for f in attrs.fields(cls)}
    obj = {k: v for k, v in required.items() if k in names and attrs.fields_dict(cls)[k].default is attrs.NOTHING}
    obj[field] = None
    return obj


def _decode_with_null(cls: type, field: str) -> None:
    if cls in NESTED.values():  # nested: inside a message that carries it
        outer = {m.TaskSpec: ("run", "tasks"), m.Submission: ("submit", "tasks"), m.Outcome: ("outcomes", "results"),
                 m.Rejection: ("accepted", "rejected")}  # fmt: skip
        if cls is m.RemoteError:
            inner = {"id": "t", "status": "error", "error": _payload(cls, field)}
            m.decode(json.dumps({"results": [inner], "type": "outcomes"}).encode())
            return
        tag, key = outer[cls]
        m.decode(json.dumps({key: [_payload(cls, field)], "type": tag}).encode())
    else:
        m.decode(json.dumps({**_payload(cls, field), "type": cls.TYPE}).encode())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("cls", "field", "kind"), ROWS, ids=[f"{c.__name__}.{f}" for c, f, _ in ROWS])
def test_null_is_accepted_exactly_where_the_type_says_or_null(cls: type, field: str, kind: str) -> None:
    """Section 2: only fields typed "X or null" take null; any other is bad-message (not "any optional field")."""
    if kind == "any":
        _decode_with_null(cls, field)  # any JSON value, null included
    elif "or null" in kind:
        _decode_with_null(cls, field)
    else:
        with pytest.raises(RemoteProtocolError) as excinfo:
            _decode_with_null(cls, field)
        assert excinfo.value.code == "bad-message"


def test_section_2_no_longer_says_any_optional_field_may_be_null() -> None:
    assert "an optional field\n  may be sent as `null`" not in DOC
    assert 'Only a field typed\n  "or null" may be sent as `null`' in SECTION_2


def test_section_2_names_every_object_field_for_php() -> None:
    """Every field decoded as a JSON object is named in the PHP warning, and the decode-side traps too."""
    object_fields = {"status-reply.status"}  # described in a sentence, not a table
    for cls, field, kind in ROWS:
        if kind.startswith("{"):
            object_fields.add(f"{cls.TYPE}.{field}" if hasattr(cls, "TYPE") and field != "kwargs" else field)
    assert object_fields == {"hello.running", "hello.retries", "hello.no_retry", "hello.retry_delay", "kwargs",
                             "status-reply.status"}
    for name in object_fields:
        assert f"`{name}`" in SECTION_2, name
    assert "json_decode($text, true)" in SECTION_2 and "PHP_INT_MAX" in SECTION_2


def test_every_welcome_example_carries_max_frame_size() -> None:
    welcomes = re.findall(r"^b'.*\"type\":\"welcome\"}'$", DOC, flags=re.MULTILINE)
    assert len(welcomes) >= 4
    for frame in welcomes:
        assert '"max_frame_size":10485760' in frame


def test_the_handshake_table_says_a_missing_nonce_is_challenged_first() -> None:
    row = next(line for line in DOC.splitlines() if line.startswith("| wrong proof"))
    assert "after the `challenge`" in row


def test_section_1_tells_workerman_users_what_to_configure() -> None:
    section_1 = DOC[DOC.index("## 1. Framing") : DOC.index("## 2. Payloads")]
    assert "This is exactly Workerman" not in section_1
    for needle in ("maxSendBufferSize", "maxPackageSize", "send() === false", "length 0"):
        assert needle in section_1, needle
