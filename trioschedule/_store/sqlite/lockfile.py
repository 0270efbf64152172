"""One dispatcher per journal: an exclusive lock on ``PATH.lock`` beside it."""

from __future__ import annotations

import os
import sys

from ..._errors import StoreError

__all__ = ["LockFile"]


class LockFile:
    """An exclusive, non-blocking lock on ``PATH.lock`` holding the owner's pid.

    ``flock`` belongs to the open file description, so the kernel drops it
    when its process dies (no stale locks to clean up), and a second open in
    the same process conflicts too.  The file is never deleted: unlinking a
    lock file races with whoever is about to lock it.
    """

    def __init__(self, path: str, journal: str) -> None:
        self.path = path
        self.journal = journal
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreError` naming who holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            _lock_nowait(fd)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "pid unknown"
            raise StoreError(
                f"the journal {self.journal} is in use by another running dispatcher ({who}, lock file {self.path}); "
                "stop that dispatcher first, or give this one a journal of its own (--store sqlite:OTHER_PATH)",
                code="locked",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"cannot lock {self.path}: {exc.strerror or exc}; keep the journal on a local filesystem",
                code="unsupported",
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is a courtesy for error messages; the lock is what counts
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (safe to call when not held)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # drops the lock


if sys.platform == "win32":  # pragma: no cover - lock one byte far past the pid, which stays readable
    import msvcrt

    def _lock_nowait(fd: int) -> None:
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError as exc:
            raise BlockingIOError(str(exc)) from exc

else:
    import fcntl

    def _lock_nowait(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None
