"""The exceptions trioschedule raises, split by who is at fault.

Every error a user can catch derives from :class:`TriosError`.  Below it the
tree says *whose* fault a failure is, because that decides what to do next:

* :class:`LocalProtocolError`: this program misused the protocol (a bug here);
* :class:`RemoteProtocolError`: the peer sent something invalid (a bug there,
  or someone who is not a trioschedule peer);
* :class:`AuthenticationError`: the credentials did not match;
* :class:`ConnectionClosed`: the connection is gone (closed, or the network
  broke); reconnecting may help;
* :class:`TaskError` and its subclasses: a task ended without a value
  (it raised, was cancelled, timed out or was lost);
* :class:`Rejected`: the dispatcher refused a submission (it is draining, its
  queue is full, a limit was exceeded);
* :class:`StoreError`: the dispatcher's journal cannot be used (locked by
  another dispatcher, written by a newer version, corrupt, or a write failed);
  :class:`StoreFenced` when a newer leader took the lease of a shared store.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectionClosed",
    "LocalProtocolError",
    "NotLeader",
    "ProtocolError",
    "QueueFull",
    "Rejected",
    "RemoteProtocolError",
    "StoreError",
    "StoreFenced",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskLost",
    "TaskTimeout",
    "TriosError",
    "UnknownSchedule",
    "UnknownTaskId",
]


class TriosError(Exception):
    """Base class of every exception raised by trioschedule."""


class ProtocolError(TriosError):
    """A frame or message broke the wire protocol.

    ``code`` is the stable machine-readable reason that also travels in error
    frames (``"frame-too-large"``, ``"bad-json"``, ``"unexpected-message"``...).
    """

    def __init__(self, message: str, *, code: str = "protocol-error") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow (a bug here)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (a bug over there)."""


class AuthenticationError(TriosError):
    """The shared-secret handshake failed: wrong token, missing token, or forged proof.

    Check that both sides were given the same ``token`` (or
    ``TRIOSCHEDULE_TOKEN``) for this role.
    """


class ConnectionClosed(TriosError):
    """The connection to the peer is closed or broken; ``reason`` says why.

    ``code`` is set when the peer closed with an error frame (its code), and
    ``leader`` when that frame named a leader (code ``not-leader``).
    """

    def __init__(self, reason: str = "connection closed", *, code: str | None = None, leader: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.leader = leader


class NotLeader(ConnectionClosed):
    """The dispatcher reached is a standby: another one leads, or none does yet (docs/HA.md).

    ``leader`` is the ``HOST:PORT`` the standby named, or None while no
    dispatcher leads.  Workers and clients move on to the leader by
    themselves; this is raised to a caller only when no address given led
    within the wait (a client's ``leader_wait``).
    """

    def __init__(self, reason: str, *, leader: str | None = None) -> None:
        super().__init__(reason, code="not-leader", leader=leader)


class Rejected(TriosError):
    """The dispatcher refused a submission.

    ``code`` is one of ``"draining"`` (the dispatcher is shutting down),
    ``"queue-full"``, ``"limit"``, ``"bad-request"``, ``"duplicate"``.
    """

    def __init__(self, message: str, *, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


class QueueFull(Rejected):
    """The dispatcher's queue is full and the call was not allowed to wait."""

    def __init__(self, message: str = "the dispatcher's queue is full; retry later or use the waiting submit()") -> None:
        super().__init__(message, code="queue-full")


class StoreError(TriosError):
    """The journal cannot be used; the message says why and what to do.

    ``code`` names the problem: ``"locked"`` (another dispatcher uses it),
    ``"newer-version"``, ``"not-a-journal"``, ``"corrupt"``, ``"unsupported"``
    (the filesystem cannot do what the journal needs), ``"io"`` (opening or
    writing failed).  Every failure a store reports from ``open``, ``add``,
    ``flush`` and ``close`` is one of these, so a caller catches this class
    alone to tell "the journal broke" from its own mistakes.
    """

    def __init__(self, message: str, *, code: str = "io") -> None:
        super().__init__(message)
        self.code = code


class StoreFenced(StoreError):
    """This dispatcher lost its lease: a newer term leads, and it wrote nothing.

    Raised by a fenced store (``Store.fence``) whose write transaction found
    the lease's term moved on; the transaction was rolled back.  The
    dispatcher steps down (docs/HA.md).  ``term`` is the term it held,
    ``current`` the one it found (None if the lease row is gone).
    """

    def __init__(self, message: str, *, term: int | None = None, current: int | None = None) -> None:
        super().__init__(message, code="fenced")
        self.term = term
        self.current = current


class UnknownTaskId(TriosError, KeyError):
    """No task with this id is known to the dispatcher (never submitted, or its result expired)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown task id"


class UnknownSchedule(TriosError, KeyError):
    """No schedule of that name (the dispatcher's answer to pause, resume or trigger)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown schedule"


class TaskError(TriosError):
    """A task ended without producing a value.  ``task_id`` names it."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailed(TaskError):
    """The task raised.  Carries the remote exception's type name, message and traceback text.

    The original exception object is never shipped (that would need pickle);
    ``remote_type``, ``remote_message`` and ``remote_traceback`` describe it.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        *,
        task_id: str | None = None,
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}", task_id=task_id)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class TaskCancelled(TaskError):
    """The task was cancelled before it finished; ``reason`` is what the canceller said."""

    def __init__(self, reason: str | None = None, *, task_id: str | None = None) -> None:
        super().__init__(f"task cancelled: {reason}" if reason else "task cancelled", task_id=task_id)
        self.reason = reason


class TaskTimeout(TaskError):
    """The task's deadline (``timeout=`` counted from submission) passed before it finished."""


class TaskLost(TaskError):
    """The task was lost more times than allowed (its workers died), or its dispatcher stopped without a journal."""
