"""Schedule definitions and their triggers: when an interval, a cron expression or a one-shot fires.

No trio, no I/O, no state: :func:`define` checks what a user asked for and
returns a :class:`Definition`; :func:`next_fire`, :func:`fires_between` and
:func:`jitter_of` compute fire times (epoch seconds, UTC) from it.  Cron
expressions are read and stepped through by cronsim, which applies Debian
cron's daylight-saving rules (docs/SCHEDULES.md); everything else about
schedules is :mod:`.schedules`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .tasks import check_options

__all__ = [
    "COALESCE",
    "CRON",
    "INTERVAL",
    "ONCE",
    "OVERLAP",
    "TOLERANCE",
    "WIRE_FIELDS",
    "Definition",
    "define",
    "fires_between",
    "iso_utc",
    "jitter_of",
    "next_fire",
    "parse_time",
    "run_id",
    "wire_definition",
]  # fmt: skip

INTERVAL: Final = "interval"
CRON: Final = "cron"
ONCE: Final = "once"
COALESCE: Final = ("latest", "earliest", "all")
OVERLAP: Final = ("skip", "buffer-one", "allow")
#: A timer may wake this much before its wall-clock time (float rounding) and still count as due.
TOLERANCE = 1e-3
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")


# ------------------------------------------------------------------ time
def iso_utc(when: float) -> str:
    """``when`` (epoch seconds) as ISO 8601 UTC with a ``Z``; microseconds only if there are any."""
    dt = datetime.fromtimestamp(round(when, 6), tz=timezone.utc)
    text = dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_time(value: Any, tz: str | None = None, what: str = "time") -> float:
    """A point in time as epoch seconds: a number, an aware or naive ``datetime``, or an ISO 8601 string.

    A naive one is read in ``tz`` if given, else in UTC.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a datetime, an ISO 8601 string or epoch seconds, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO 8601 date and time (like 2026-12-07T09:00:00Z)") from None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, an ISO 8601 string or epoch seconds, not {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_zone(tz) if tz else timezone.utc)
    return float(value.timestamp())


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name like 'Europe/Berlin' or 'UTC'") from None


def run_id(name: str, fire_time: float) -> str:
    """The task id of schedule ``name``'s run for ``fire_time``: ``sched:<name>:<ISO 8601 UTC>``.

    A function of the two alone, so that a replay or a restart cannot submit
    one fire time twice.
    """
    return f"sched:{name}:{iso_utc(fire_time)}"


# ------------------------------------------------------------------ definitions
class Definition:
    """What the user asked for: checked, normalised, comparable.  Times are epoch seconds."""

    FIELDS: Final = ("name", "task", "args", "kwargs", "kind", "every", "start", "cron", "tz", "at", "misfire_grace",
                     "coalesce", "overlap", "jitter", "timeout", "retries", "priority")  # fmt: skip
    __slots__ = FIELDS

    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    kind: str
    every: float | None
    start: float | None
    cron: str | None
    tz: str | None
    at: float | None
    misfire_grace: float | None
    coalesce: str
    overlap: str
    jitter: float
    timeout: float | None
    retries: int | None
    priority: int

    def __init__(self, **fields: Any) -> None:
        for field in self.FIELDS:
            setattr(self, field, fields[field])

    def to_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Definition) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def same_trigger(self, other: Definition) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in ("kind", "every", "start", "cron", "tz", "at"))

    def spec(self) -> str:
        """The trigger as people write it: ``every 30s``, ``0 2 * * 1-5 Europe/Berlin``, ``at 2026-12-07T09:00:00Z``."""
        if self.kind == INTERVAL:
            assert self.every is not None
            text = f"every {self.every:g}s"
            return text if self.start is None else f"{text} from {iso_utc(self.start)}"
        if self.kind == CRON:
            return f"{self.cron} {self.tz or 'UTC'}"
        assert self.at is not None
        return f"at {iso_utc(self.at)}"


def define(
    name: str, task: str, args: Any = (), kwargs: dict[str, Any] | None = None, *, every: float | None = None,
    start: Any = None, cron: str | None = None, tz: str | None = None, at: Any = None,
    misfire_grace: float | None = None, coalesce: str = "latest", overlap: str = "skip", jitter: float = 0.0,
    timeout: float | None = None, retries: int | None = None, priority: int = 0, now: float | None = None,
) -> Definition:  # fmt: skip
    """Check a schedule as given to ``add_schedule`` and normalise it; raises ValueError saying what is wrong.

    ``now`` (epoch seconds) refuses a one-shot time in the past.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("a schedule name must be 1 to 200 characters without spaces or control characters")
    if not isinstance(task, str) or not task:
        raise ValueError("a schedule must name its task (a non-empty string)")
    if isinstance(args, (str, bytes)) or not hasattr(args, "__iter__"):
        raise ValueError("args must be a list of positional arguments")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError("kwargs must be a dict")
    given = [what for what, value in (("every", every), ("cron", cron), ("at", at)) if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one trigger: every= (seconds), cron= (an expression) or at= (a time)"
                         + (f"; got {', '.join(given)}" if given else ""))  # fmt: skip
    if tz is not None:
        _zone(tz)
    kind = INTERVAL if every is not None else CRON if cron is not None else ONCE
    every_s = start_s = at_s = None
    if kind == INTERVAL:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not (math.isfinite(every) and every > 0):
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        every_s = float(every)
        start_s = None if start is None else parse_time(start, tz, "start")
    elif start is not None:
        raise ValueError("start= anchors an interval (every=); cron and one-shot schedules have none")
    if kind == CRON:
        assert cron is not None
        cron = " ".join(str(cron).split())
        try:
            CronSim(cron, datetime.now(_zone(tz) if tz else timezone.utc))
        except (CronSimError, ValueError, IndexError) as exc:
            raise ValueError(f"bad cron expression {cron!r}: {exc or 'not understood'} "
                             "(5 fields: minute hour day month weekday, or 6 with seconds first)") from None  # fmt: skip
        tz = tz or "UTC"
    if kind == ONCE:
        at_s = parse_time(at, tz, "at")
        if now is not None and at_s <= now:
            raise ValueError(f"at={iso_utc(at_s)} is in the past (now is {iso_utc(now)}): a one-shot schedule "
                             "must name a time to come")  # fmt: skip
    if kind != CRON and tz is not None and kind == INTERVAL and start is None:
        tz = None  # nothing to read in it
    if misfire_grace is not None and not (isinstance(misfire_grace, (int, float)) and misfire_grace >= 0):
        raise ValueError("misfire_grace must be seconds >= 0, or None for no limit")
    if coalesce not in COALESCE:
        raise ValueError(f"coalesce must be one of {', '.join(COALESCE)}, not {coalesce!r}")
    if overlap not in OVERLAP:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, not {overlap!r}")
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise ValueError("jitter must be seconds >= 0")
    check_options(timeout, retries, None)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError("priority must be an integer")
    return Definition(
        name=name, task=task, args=list(args), kwargs=dict(kwargs or {}), kind=kind, every=every_s, start=start_s,
        cron=cron, tz=tz, at=at_s, misfire_grace=None if misfire_grace is None else float(misfire_grace),
        coalesce=coalesce, overlap=overlap, jitter=float(jitter),
        timeout=None if timeout is None else float(timeout), retries=retries, priority=priority,
    )  # fmt: skip


#: The fields of a ``schedule`` request's definition (``add_schedule``'s keywords).
WIRE_FIELDS: Final = ("name", "task", "args", "kwargs", "every", "start", "cron", "tz", "at", "misfire_grace",
                      "coalesce", "overlap", "jitter", "timeout", "retries", "priority")  # fmt: skip
def wire_definition(**fields: Any) -> dict[str, Any]:
    """A definition as a ``schedule`` request carries it: checked here first, times as ISO 8601 UTC, defaults left out."""
    d = define(**fields)
    out: dict[str, Any] = {}
    defaults = {"args": [], "kwargs": {}, "coalesce": "latest", "overlap": "skip", "jitter": 0.0, "priority": 0}
    for field in WIRE_FIELDS:
        value = getattr(d, field)
        if field in ("start", "at") and value is not None:
            value = iso_utc(value)
        if field == "tz" and d.kind == "cron" and fields.get("tz") is None:
            continue  # the dispatcher's default (UTC) is the same
        if value is None or (field in defaults and value == defaults[field]):
            continue
        out[field] = value
    return out


# ------------------------------------------------------------------ triggers
def next_fire(d: Definition, anchor: float, after: float) -> float | None:
    """The first fire time strictly after ``after`` (None if there is none)."""
    if d.kind == INTERVAL:
        assert d.every is not None
        every = d.every
        k = max(0, math.floor((after - anchor) / every) + 1)
        fire = anchor + k * every
        while fire <= after:  # float rounding
            k += 1
            fire = anchor + k * every
        return fire
    if d.kind == ONCE:
        assert d.at is not None
        return d.at if d.at > after else None
    for fire in _cron_fires(d, after):
        return fire
    return None


def _cron_fires(d: Definition, after: float) -> Iterator[float]:
    """Cron fire times strictly after ``after``, in order (cronsim applies Debian cron's DST rules)."""
    assert d.cron is not None
    zone = _zone(d.tz or "UTC")
    last = after
    try:
        for dt in CronSim(d.cron, datetime.fromtimestamp(after, tz=zone)):
            fire = dt.timestamp()
            # cronsim steps a daily job in local time; after the first of two 01:30s
            # (fall back) it may name that one again: never go back.
            if fire > last:
                last = fire
                yield fire
    except StopIteration:  # pragma: no cover - cronsim ends an impossible expression so
        return


def fires_between(d: Definition, anchor: float, after: float, until: float) -> Iterator[float]:
    """Fire times in ``(after, until]``, in order."""
    if d.kind == CRON:
        for fire in _cron_fires(d, after):
            if fire > until:
                return
            yield fire
        return
    following = next_fire(d, anchor, after)
    while following is not None and following <= until:
        yield following
        following = next_fire(d, anchor, following)


def jitter_of(d: Definition, anchor: float, fire: float) -> float:
    """The delay of ``fire``'s run: deterministic in (name, fire time), below ``jitter`` and before the next fire."""
    if not d.jitter:
        return 0.0
    digest = hashlib.sha256(f"{d.name}\x00{iso_utc(fire)}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
    following = next_fire(d, anchor, fire)
    room = d.jitter if following is None else min(d.jitter, following - fire)
    return fraction * room
