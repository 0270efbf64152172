"""The Store interface: what the base class and MemoryStore promise the dispatcher."""

from __future__ import annotations

from trioschedule import MemoryStore, SQLiteStore, Store, StoreError, TriosError
from trioschedule._store.base import StoredTask


def test_memory_store_keeps_nothing_and_owns_no_queue():
    assert issubclass(MemoryStore, Store) and MemoryStore is not Store
    assert not MemoryStore.durable and MemoryStore.url == "memory:"
    assert not MemoryStore.narrow_updates() and MemoryStore().mark() is None


def test_the_dispatcher_owns_the_waiting_tasks_of_every_store_there_is():
    # The seam a shared store will use (docs/STORE.md); none of today's stores owns the queue.
    assert Store.owns_queue is False and MemoryStore.owns_queue is False and SQLiteStore.owns_queue is False


def test_sqlite_takes_the_narrow_updates():
    assert SQLiteStore.narrow_updates()


def test_store_error_is_public_and_typed():
    error = StoreError("the journal is locked", code="locked")
    assert isinstance(error, TriosError) and error.code == "locked"
    assert StoreError("write failed").code == "io"


async def test_the_base_class_builds_stored_tasks_for_add_new_many():
    added: list[StoredTask] = []

    class Recording(Store):
        async def add(self, tasks: list[StoredTask]) -> None:
            added.extend(tasks)

    await Recording().add_new_many(["a", "b"], [[1], [2]], "add", {"k": 1}, 3, 2, 2e9, None, 1000.5)
    assert added == [
        StoredTask(id=task_id, name="add", args=args, kwargs={"k": 1}, priority=3, retries=2, deadline=2e9,
                   submitted_at=1000.5)
        for task_id, args in (("a", [1]), ("b", [2]))
    ]  # fmt: skip


async def test_a_store_one_dispatcher_owns_is_not_shared_and_has_no_lease():
    from trioschedule import StoreFenced
    from trioschedule._store.base import Leadership, Lease, Member

    for store in (MemoryStore(), SQLiteStore("unused.sqlite")):
        assert store.shared is False and store.leadership() is None
        try:
            store.fence(1)
        except TypeError as exc:
            assert "not shared" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("fence() on a store that is not shared must refuse")
    fenced = StoreFenced("lost the lease", term=3, current=4)
    assert isinstance(fenced, StoreError) and fenced.code == "fenced" and (fenced.term, fenced.current) == (3, 4)
    assert Lease(term=1, holder="a", address="h:1", expires_in=2.0).term == 1
    assert Member(holder="a", address="h:1", role="standby", seen_ago=0.5).role == "standby"
    assert Leadership.aclose is not None
