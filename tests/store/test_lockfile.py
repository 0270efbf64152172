"""One dispatcher per journal: the lock file beside it."""

from __future__ import annotations

import os

import pytest

from trioschedule import StoreError
from trioschedule._store.sqlite import SQLiteStore
from trioschedule._store.sqlite.lockfile import LockFile

from .helpers import new_task


async def test_a_journal_in_use_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / "j.sqlite"
    first = SQLiteStore(path)
    await first.open()
    assert (tmp_path / "j.sqlite.lock").read_text().split()[0] == str(os.getpid())
    second = SQLiteStore(path)
    with pytest.raises(StoreError) as info:
        await second.open()
    assert info.value.code == "locked"
    assert f"pid {os.getpid()}" in str(info.value) and "in use" in str(info.value)
    with pytest.raises(RuntimeError):
        second.update(new_task("x"))  # a refused open leaves the store closed
    await first.close()
    assert await second.open() == []  # the lock went with the first store
    await second.close()




def test_the_lock_conflicts_within_one_process_and_is_released(tmp_path):
    first = LockFile(str(tmp_path / "j.lock"), "j")
    second = LockFile(str(tmp_path / "j.lock"), "j")
    first.acquire()
    with pytest.raises(StoreError, match=f"pid {os.getpid()}") as info:
        second.acquire()
    assert info.value.code == "locked" and second.fd is None
    first.release()
    first.release()  # twice is harmless
    second.acquire()
    second.release()
    assert (tmp_path / "j.lock").exists()  # never deleted: that would race with the next locker
