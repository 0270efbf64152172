"""The PostgreSQL store beyond the common contract (test_contract.py): schema versions, batching,
the change log and its recovery, idempotent retries, reconnecting, schedules, the lease and fencing.
On a real server (tests/postgres.py)."""

from __future__ import annotations

import time

import psycopg
import pytest
import trio

from trioschedule import StoreError, StoreFenced
from trioschedule._json import json_encoder
from trioschedule._store import changelog
from trioschedule._store import generation as _generation
from trioschedule._store.changelog import FINISH, FORGET, RUN, RUNS, VALUES
from trioschedule._store.generation import Generation
from trioschedule._store.postgresql import PostgreSQLLeadership, PostgreSQLStore, schema
from trioschedule._store.postgresql.checkpoint import net_statements

from ..postgres import journal_rows
from .helpers import done, new_task

pytestmark = pytest.mark.postgresql


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def table(url: str) -> list[tuple]:
    return query(url, "SELECT * FROM trioschedule_tasks ORDER BY id")


def journal(url: str) -> list[tuple]:
    """The tasks table with the change log applied (rolled back): what a recovery would load.

    Without ``seq``: an identity's numbers are taken even by a transaction that rolls back.
    """
    return journal_rows(url, "SELECT id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, "
                             "state, attempt, failures, losses, session, outcome, finished_at "
                             "FROM trioschedule_tasks ORDER BY id")  # fmt: skip


async def reopen(url: str, **kwargs):
    store = PostgreSQLStore(url, **kwargs)
    rows = await store.open()
    await store.close()
    return rows


# ================================================================ schema versions
async def test_an_empty_database_gets_every_migration_in_order(postgres_url):
    assert await reopen(postgres_url) == []
    versions = query(postgres_url, "SELECT version, description FROM trioschedule_schema_version ORDER BY version")
    assert [v for v, _ in versions] == [m.version for m in schema.MIGRATIONS] == [1, 2, 3, 4]
    assert query(postgres_url, "SELECT term, holder FROM trioschedule_lease") == [(0, "")]


async def test_a_version_1_database_migrates_and_keeps_its_tasks(postgres_url):
    with psycopg.connect(postgres_url) as conn:
        assert schema.prepare(conn, postgres_url, upto=1) == 0
        conn.execute(
            "INSERT INTO trioschedule_tasks (id, name, args, kwargs, priority, submitted_at, state, attempt, failures, "
            "losses) VALUES ('old', 'add', '[1,2]', '{\"k\":1}', 3, 12.5, 'queued', 0, 0, 0)"
        )
        conn.commit()
    assert query(postgres_url, "SELECT to_regclass('trioschedule_lease') IS NULL") == [(True,)]
    rows = await reopen(postgres_url)
    assert [(r.id, r.args, r.kwargs, r.priority, r.submitted_at) for r in rows] == [("old", [1, 2], {"k": 1}, 3, 12.5)]
    assert query(postgres_url, "SELECT max(version) FROM trioschedule_schema_version") == [(4,)]
    leadership = PostgreSQLLeadership(postgres_url)
    assert await leadership.campaign("a", "h:1", 5) == 1  # what version 2 added works
    await leadership.aclose()


async def test_a_database_of_a_newer_version_is_refused_untouched(postgres_url):
    await reopen(postgres_url)
    query(postgres_url, "INSERT INTO trioschedule_schema_version (version, description) VALUES (99, 'future')")
    with pytest.raises(StoreError, match="newer trioschedule") as info:
        await reopen(postgres_url)
    assert info.value.code == "newer-version"
    assert query(postgres_url, "SELECT max(version) FROM trioschedule_schema_version") == [(99,)]


async def test_an_unreachable_database_is_a_store_error(postgres_server):
    with pytest.raises(StoreError, match="cannot open") as info:
        await reopen(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database")
    assert info.value.code == "io"


# ================================================================ batching
def xact_commits(url: str) -> int:
    """Transactions committed in this database (pg_stat_database), once the counters settle."""
    name = url.rsplit("/", 1)[1]
    last = -1
    for _ in range(50):  # backends report their counters when they exit or every second or so
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            value = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()[0]
        if value == last:
            return int(value)
        last = value
        time.sleep(0.3)
    return int(last)


async def test_a_thousand_tasks_take_a_few_transactions_not_thousands(postgres_url):
    await reopen(postgres_url)  # the schema, so that what follows is the journal alone
    before = xact_commits(postgres_url)
    store = PostgreSQLStore(postgres_url)
    await store.open()
    count = 2000
    async with trio.open_nursery() as nursery:  # 20 clients submitting at once
        for b in range(20):
            nursery.start_soon(store.add_new_many, [f"{b}-{i}" for i in range(count // 20)],
                               [[i, 1] for i in range(count // 20)], "add", {}, 0, None, None, None, 1.0)  # fmt: skip
    for b in range(20):
        ids = [f"{b}-{i}" for i in range(count // 20)]
        store.update_running_many(ids, 1, 0, 0, "s")
        for task_id in ids:
            store.update_done(task_id, 1, 0, 0, {"id": task_id, "status": "ok", "attempt": 1, "value": 2}, 5.0)
        store.forget(ids)
    await store.flush()
    commits = store.statistics().commits
    await store.close()
    transactions = xact_commits(postgres_url) - before
    # 8,000 operations on 2,000 tasks; one transaction per group commit, plus a few at open.
    assert commits <= 25, commits
    assert transactions <= commits + 15, (transactions, commits)
    assert table(postgres_url) == []


async def test_replaying_a_checkpoint_on_its_own_result_changes_nothing(postgres_url):
    """What a retry after a lost connection does, and a recovery that replays rows a checkpoint had applied:
    the same statements again on top of their own result."""
    await reopen(postgres_url)
    encode = json_encoder()
    ops = [
        *changelog.new_rows([("n1", "add", [1], {}, 0, None, None, None, 2.0),
                             ("gone", "add", ["x"], {}, 0, None, None, None, 2.0)], encode),
        (changelog.ACCEPTED, ["m1", "m2"], encode(("mul", {}, 1, None, None, None, 3.0, ["m1", [1], "m2", [2]])), {}),
        (VALUES, "e2", changelog.values(done(new_task("e2"), 7, finished_at=8.0))[2]),
        (RUNS, ["m1", "m2"], "s", 1, 0, 0),
        (RUN, "e1", "s", 1, 0, 0),
        (FINISH, "m1", 1, {"id": "m1", "status": "ok", "attempt": 1, "value": 1}, 9.0, 0, 0),
        (FINISH, "n1", 1, {"id": "n1", "status": "error", "attempt": 1, "error": "E"}, 9.5, 1, 0),
        (FORGET, "m1"),
        (FORGET, "gone"),
    ]  # fmt: skip
    generation = Generation()
    generation.fold(ops, encode)
    statements = net_statements(generation.net(generation.latest, encode))
    assert len(statements) <= 5  # one per kind of change, whatever the number of tasks
    states = []
    with psycopg.connect(postgres_url) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO trioschedule_tasks (id, name, args, kwargs, priority, submitted_at, state, "
                         "attempt, failures, losses) VALUES ('e1', 'add', '[1,2]', '{}', 0, 1.0, 'queued', 0, 0, 0), "
                         "('e2', 'add', '[1,2]', '{}', 0, 1.0, 'queued', 0, 0, 0)")  # fmt: skip
        for _ in range(3):
            with conn.transaction():
                for sql, params in statements:
                    conn.execute(sql, params)
            states.append(query(postgres_url, "SELECT id, name, args, state, attempt, session, outcome, "
                                              "finished_at FROM trioschedule_tasks ORDER BY id"))  # fmt: skip
    assert states[0] == states[1] == states[2]
    assert states[0] == [
        ("e1", "add", "[1,2]", "running", 1, "s", None, None),
        ("e2", "add", "[]", "done", 0, None, '{"id":"e2","status":"ok","attempt":0,"value":7}', 8.0),
        ("m2", "mul", "[2]", "running", 1, "s", None, None),
        ("n1", "add", "[]", "done", 1, None, '{"id":"n1","status":"error","attempt":1,"error":"E"}', 9.5),
    ]


# ================================================================ the change log
async def test_a_commit_is_one_change_log_row_and_a_map_task_never_reaches_the_table(postgres_url, monkeypatch):
    monkeypatch.setattr(_generation, "GENERATION_SECONDS", 3600.0)  # no checkpoint until close()
    store = PostgreSQLStore(postgres_url)
    await store.open()
    ids = [f"t{i}" for i in range(500)]
    await store.add_new_many(ids, [[i] for i in range(500)], "add", {}, 0, None, None, None, 1.0)
    store.update_running_many(ids, 1, 0, 0, "s")
    await store.flush()
    for task_id in ids[:400]:
        store.update_done(task_id, 1, 0, 0, {"id": task_id, "status": "ok", "attempt": 1, "value": 1}, 5.0)
    store.forget(ids[:300])
    await store.flush()
    commits = store.statistics().commits
    assert query(postgres_url, "SELECT count(*) FROM trioschedule_changes") == [(commits,)]
    assert table(postgres_url) == []  # everything is still in the change log
    states = journal_rows(postgres_url, "SELECT state, count(*) FROM trioschedule_tasks GROUP BY state ORDER BY state")
    assert states == [("done", 100), ("running", 100)]
    assert store.statistics().checkpoints == 0
    await store.close()  # the last checkpoint: everything in the table, the change log empty
    assert store.statistics().checkpoints == 1
    assert query(postgres_url, "SELECT count(*) FROM trioschedule_changes") == [(0,)]
    assert query(postgres_url, "SELECT state, count(*) FROM trioschedule_tasks GROUP BY state ORDER BY state") == states


async def test_a_dispatcher_that_died_before_its_checkpoint_is_recovered_from_the_change_log(postgres_url, monkeypatch):
    """The writer's connection dies after its commits and before any checkpoint (as when the dispatcher
    is killed): the next open applies the change log, in order, on top of the table."""
    monkeypatch.setattr(_generation, "GENERATION_SECONDS", 3600.0)
    store = PostgreSQLStore(postgres_url)
    await store.open()
    await store.add([new_task("a"), new_task("b"), new_task("c")])
    await store.close()  # a checkpoint: a, b and c are in the table
    store = PostgreSQLStore(postgres_url, reconnect_timeout=0)
    await store.open()
    store.update_running("a", 1, 0, 0, "s1")
    store.update_done("b", 1, 0, 0, {"id": "b", "status": "ok", "attempt": 1, "value": [0.1, None]}, 7.25)
    await store.flush()
    store.update_done("a", 1, 0, 0, {"id": "a", "status": "ok", "attempt": 1, "value": 2}, 8.5)
    store.forget(["c"])
    await store.add([new_task("d")])
    store.update_running("d", 2, 1, 0, "s2")
    await store.flush()
    commits = store.statistics().commits
    # Die: the server ends the writer's session, so close() cannot checkpoint (one attempt, no retry).
    query(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
                        "LIKE 'trioschedule pid%%' AND pid <> pg_backend_pid()", ())  # fmt: skip
    await store.close()
    assert query(postgres_url, "SELECT count(*) FROM trioschedule_changes") == [(commits,)]
    assert [row[0] for row in table(postgres_url)] == ["a", "b", "c"]  # as of the checkpoint
    rows = {t.id: t for t in await reopen(postgres_url)}
    assert sorted(rows) == ["a", "b", "d"]
    assert (rows["a"].state, rows["a"].outcome, rows["a"].finished_at) == ("done", {"id": "a", "status": "ok",
                                                                                    "attempt": 1, "value": 2}, 8.5)  # fmt: skip
    assert rows["b"].outcome["value"] == [0.1, None] and rows["b"].finished_at == 7.25
    assert (rows["d"].state, rows["d"].attempt, rows["d"].failures, rows["d"].session) == ("running", 2, 1, "s2")
    assert query(postgres_url, "SELECT count(*) FROM trioschedule_changes") == [(0,)]


async def test_a_change_log_that_does_not_decode_is_refused_untouched(postgres_url):
    await reopen(postgres_url)
    query(postgres_url, "INSERT INTO trioschedule_changes (seq, ops) VALUES (1, '[[not json')")
    with pytest.raises(StoreError, match="change log") as info:
        await reopen(postgres_url)
    assert info.value.code == "corrupt"
    assert query(postgres_url, "SELECT seq FROM trioschedule_changes") == [(1,)]


async def test_the_writer_reconnects_after_the_database_restarts(postgres_server, postgres_url):
    store = PostgreSQLStore(postgres_url)
    await store.open()
    await store.add([new_task(f"before-{i}") for i in range(100)])
    for i in range(100):
        store.update_running(f"before-{i}", 1, 0, 0, "s")
    try:
        await trio.to_thread.run_sync(postgres_server.restart)
        with trio.fail_after(60):
            await store.add([new_task(f"after-{i}") for i in range(100)])  # waits for the reconnection
            await store.flush()
    finally:
        if postgres_server.pid is None:
            postgres_server.start()
    stats = store.statistics()
    assert stats.reconnects >= 1 and not stats.failed
    await store.close()
    rows = {r.id: r for r in await reopen(postgres_url)}
    assert len(rows) == 200
    assert all(rows[f"before-{i}"].state == "running" for i in range(100))


async def test_a_database_gone_for_longer_than_reconnect_timeout_stops_the_store(postgres_server, postgres_url):
    store = PostgreSQLStore(postgres_url, reconnect_timeout=1.0)
    await store.open()
    await store.add([new_task("kept")])
    try:
        await trio.to_thread.run_sync(postgres_server.stop)
        with trio.fail_after(30), pytest.raises(StoreError, match="unreachable") as info:
            await store.add([new_task("lost")])
        assert info.value.code == "io" and store.statistics().failed
    finally:
        await trio.to_thread.run_sync(postgres_server.start)
    with pytest.raises(StoreError):
        await store.close()
    assert [r.id for r in await reopen(postgres_url)] == ["kept"]


# ================================================================ schedules
async def test_schedules_are_records_keyed_by_name(postgres_url):
    store = PostgreSQLStore(postgres_url)
    await store.open()
    assert await store.load_schedules() == []
    await store.save_schedules([{"name": "b", "every": 5.5, "args": [1, {"x": None}]}, {"name": "a", "cron": "* * * * *"}])
    await store.save_schedules([{"name": "b", "every": 10}])  # replaces
    await store.delete_schedule("a")
    await store.delete_schedule("never-there")
    with pytest.raises(TypeError):
        await store.save_schedules([{"every": 1}])
    assert await store.load_schedules() == [{"name": "b", "every": 10}]
    await store.close()
    store = PostgreSQLStore(postgres_url)
    await store.open()
    assert await store.load_schedules() == [{"name": "b", "every": 10}]
    await store.close()
    assert query(postgres_url, "SELECT name, record->>'every' FROM trioschedule_schedules") == [("b", "10")]


# ================================================================ the lease
async def test_campaign_renew_resign_current(postgres_url):
    a, b = PostgreSQLLeadership(postgres_url), PostgreSQLLeadership(postgres_url)
    try:
        assert await a.current() is None  # never taken
        assert await a.campaign("node-a", "127.0.0.1:7311", 30) == 1
        assert await b.campaign("node-b", "127.0.0.1:7312", 30) is None  # a live lease is not taken
        lease = await b.current()
        assert (lease.term, lease.holder, lease.address) == (1, "node-a", "127.0.0.1:7311")
        assert 25 < lease.expires_in <= 30
        assert await a.renew(1, 60) is True
        assert 55 < (await b.current()).expires_in <= 60
        assert await b.renew(2, 60) is False  # not its term
        await b.resign(2)  # not its term: nothing happens
        assert (await b.current()).expires_in > 50
        await a.resign(1)
        assert (await b.current()).expires_in <= 0
        assert await b.campaign("node-b", "127.0.0.1:7312", 30) == 2  # taken at once after a resignation
        assert await a.renew(1, 30) is False  # the old term lost it: renewing cannot take it back
        assert (await a.current()).holder == "node-b"
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_lease_expires_by_the_database_clock_and_terms_only_grow(postgres_url):
    a, b = PostgreSQLLeadership(postgres_url), PostgreSQLLeadership(postgres_url)
    try:
        terms = []
        for _ in range(2):
            term = await a.campaign("node-a", "", 1.5)
            assert term == (terms[-1] + 1 if terms else 1)
            assert await b.campaign("node-b", "", 1.5) is None  # live
            with trio.fail_after(20):  # it expires by the database's clock, which current() reads
                while (await b.current()).expires_in > 0:
                    await trio.sleep(0.05)
            won = await b.campaign("node-b", "", 1.5)
            assert won == term + 1 and (await a.current()).holder == "node-b"
            assert await a.renew(term, 1.5) is False
            await b.resign(won)
            terms += [term, won]
        assert terms == [1, 2, 3, 4]
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_campaigners_racing_from_two_threads_exactly_one_wins(postgres_url):
    racers = [PostgreSQLLeadership(postgres_url) for _ in range(2)]
    try:
        await racers[0].current()  # schema in place before the race
        await racers[1].current()
        last = 0
        for _ in range(15):
            results: list[int | None] = [None, None]

            async def race(i: int, results: list[int | None] = results) -> None:
                results[i] = await racers[i].campaign(f"node-{i}", f"h:{i}", 30)

            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(race, i)
            winners = [term for term in results if term is not None]
            assert len(winners) == 1, results
            assert winners[0] == last + 1
            last = winners[0]
            await racers[0].resign(last)
    finally:
        for racer in racers:
            await racer.aclose()


async def test_members_announce_themselves(postgres_url):
    leadership = PostgreSQLLeadership(postgres_url)
    try:
        await leadership.announce("node-a", "127.0.0.1:7311", "leader")
        await leadership.announce("node-b", "127.0.0.1:7312", "standby")
        await leadership.announce("node-b", "127.0.0.1:7313", "standby")  # an upsert by holder
        members = await leadership.members(within=60)
        assert [(m.holder, m.address, m.role) for m in members] == [
            ("node-a", "127.0.0.1:7311", "leader"), ("node-b", "127.0.0.1:7313", "standby")
        ]  # fmt: skip
        assert all(0 <= m.seen_ago < 30 for m in members)
        await trio.sleep(1.0)
        await leadership.announce("node-b", "127.0.0.1:7313", "standby")
        assert [m.holder for m in await leadership.members(within=0.8)] == ["node-b"]
        with pytest.raises(ValueError):
            await leadership.announce("node-c", "", "boss")
    finally:
        await leadership.aclose()


async def test_an_unreachable_lease_is_a_store_error(postgres_server):
    leadership = PostgreSQLLeadership(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_db")
    with pytest.raises(StoreError) as info:
        await leadership.current()
    assert info.value.code == "io"
    await leadership.aclose()


# ================================================================ fencing
async def test_a_fenced_store_writes_nothing_once_a_newer_term_leads(postgres_url):
    old, new = PostgreSQLLeadership(postgres_url), PostgreSQLLeadership(postgres_url)
    store = PostgreSQLStore(postgres_url)
    try:
        term = await old.campaign("old", "h:1", 30)
        store.fence(term)
        assert store.term == term
        await store.open()
        await store.add([new_task("a"), new_task("b")])
        store.update_running("a", 1, 0, 0, "s")
        await store.flush()
        await store.save_schedules([{"name": "s", "every": 1}])
        before = journal(postgres_url)
        changes = query(postgres_url, "SELECT seq, ops FROM trioschedule_changes ORDER BY seq")
        schedules = query(postgres_url, "SELECT name, record FROM trioschedule_schedules")

        await old.resign(term)  # as if the lease had expired while this dispatcher was paused
        assert await new.campaign("new", "h:2", 30) == term + 1
        store.update_done("a", 1, 0, 0, {"id": "a", "status": "ok", "attempt": 1, "value": 1}, 5.0)
        store.forget(["b"])
        with pytest.raises(StoreFenced) as info:
            await store.add([new_task("c")])
        assert (info.value.term, info.value.current, info.value.code) == (term, term + 1, "fenced")
        with pytest.raises(StoreFenced):
            await store.save_schedules([{"name": "s", "every": 2}])
        with pytest.raises(StoreFenced):
            await store.close()
        assert journal(postgres_url) == before  # not one row changed
        assert query(postgres_url, "SELECT seq, ops FROM trioschedule_changes ORDER BY seq") == changes
        assert query(postgres_url, "SELECT name, record FROM trioschedule_schedules") == schedules

        stale = PostgreSQLStore(postgres_url)
        stale.fence(term)
        with pytest.raises(StoreFenced):
            await stale.open()  # the term moved on before it even opened: it recovers nothing
        fresh = PostgreSQLStore(postgres_url)
        fresh.fence(term + 1)
        assert {t.id for t in await fresh.open()} == {"a", "b"}
        await fresh.close()
    finally:
        await old.aclose()
        await new.aclose()


async def test_fenced_stores_take_turns_and_an_unfenced_one_is_refused(postgres_url):
    leadership = PostgreSQLLeadership(postgres_url)
    first = PostgreSQLStore(postgres_url)
    first.fence(await leadership.campaign("one", "", 30))
    await first.open()
    try:
        with pytest.raises(StoreError, match="lease") as info:
            await reopen(postgres_url)  # without the lease, a second dispatcher would write unchecked
        assert info.value.code == "locked"
        with pytest.raises(ValueError):
            PostgreSQLStore(postgres_url).fence(0)
        with pytest.raises(RuntimeError):
            first.fence(5)  # only before open()
    finally:
        await first.close()
        await leadership.aclose()
