"""The worker's task side: how a task's failure and an unsendable result go on the wire."""

from __future__ import annotations

import os

import trioschedule
from trioschedule._errors import LocalProtocolError
from trioschedule._protocol import messages as m
from trioschedule._worker.runner import TaskRunner, describe_exception, encodable


def users_task() -> None:
    raise ValueError("it broke")


def caught_by_trioschedule(fn):
    """``fn``'s exception, caught in a frame whose file lies in the trioschedule package (as _run is)."""
    package = os.path.dirname(os.path.abspath(trioschedule.__file__))
    source = "def call(fn):\n    try:\n        fn()\n    except Exception as exc:\n        return exc\n"
    namespace: dict = {}
    exec(compile(source, os.path.join(package, "_net", "elsewhere.py"), "exec"), namespace)  # noqa: S102
    return namespace["call"](fn)


def test_a_failure_keeps_its_type_message_and_the_tasks_own_frames_only():
    error = describe_exception(caught_by_trioschedule(users_task))
    assert (error.type, error.message) == ("ValueError", "it broke")
    assert 'raise ValueError("it broke")' in error.traceback
    assert "elsewhere.py" not in error.traceback  # any trioschedule module, not only the worker's own


def test_a_result_that_cannot_be_sent_becomes_the_tasks_error():
    fine = m.Outcome(id="t1", status=m.OK, attempt=2, value=[1, 2])
    assert encodable(fine, 1 << 20) is fine
    too_large = m.Outcome(id="t2", status=m.OK, attempt=3, value="x" * 5000)
    error = encodable(too_large, 4096)
    assert (error.id, error.status, error.attempt) == ("t2", m.ERROR, 3)
    assert error.error is not None and "cannot be sent" in error.error.message
    not_json = encodable(m.Outcome(id="t3", status=m.OK, value={1, 2}), 1 << 20)
    assert not_json.status == m.ERROR


class SmallFrames:
    """A connection that refuses a Results frame of more than two results, or one holding a set."""

    def __init__(self) -> None:
        self.frames: list[m.Results] = []

    def send(self, frame: m.Results, wake: bool = True) -> None:
        if len(frame.results) > 2 or any(isinstance(o.value, set) for o in frame.results):
            raise LocalProtocolError("frame too large")
        self.frames.append(frame)


def test_results_too_large_for_one_frame_go_in_parts_each_kept_until_acknowledged():
    runner = TaskRunner()
    runner.max_frame_size = 1 << 20
    conn = SmallFrames()
    results = [m.Outcome(id=f"t{i}", status=m.OK, value={i} if i == 3 else i) for i in range(5)]
    runner._send_results(conn, ("s1", "s2"), results)  # type: ignore[arg-type]
    assert [frame.seq for frame in conn.frames] == [1, 2, 3, 4]
    assert [frame.started for frame in conn.frames] == [("s1", "s2"), (), (), ()]  # with the first part sent
    assert [[o.id for o in frame.results] for frame in conn.frames] == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
    unsendable = conn.frames[2].results[0]
    assert unsendable.status == m.ERROR and "cannot be sent" in unsendable.error.message
    assert list(runner._unacked) == conn.frames  # resent on resume until the dispatcher acknowledges them
