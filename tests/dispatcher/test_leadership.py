"""Several dispatchers on one PostgreSQL database: one leads, the others stand by (docs/HA.md).

Real parts: a real PostgreSQL server (tests/postgres.py), real sockets on
127.0.0.1, real time (the lease lives on the database's clock, so virtual time
cannot drive it).  The lease is short (LEASE seconds) to keep these quick.
"""

from __future__ import annotations

import psycopg
import pytest
import trio

from tests.operations.helpers import api_status, get
from tests.postgres import journal_rows
from tests.processes import wait_for
from trioschedule import Dispatcher, open_client
from trioschedule._errors import ConnectionClosed, Rejected, StoreFenced
from trioschedule._net.peerconn import open_connection
from trioschedule._store.registry import open_store

pytestmark = pytest.mark.postgresql

LEASE = 1.5


def dispatcher(url: str, **kwargs) -> Dispatcher:
    kwargs.setdefault("lease_ttl", LEASE)
    kwargs.setdefault("session_grace", 5.0)
    return Dispatcher("127.0.0.1", 0, store=url, **kwargs)


async def serve(d: Dispatcher, ended: list[BaseException | None], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """``d.serve`` that records how it ended (None: returned) instead of failing the test's nursery."""
    try:
        await d.serve(task_status=task_status)
    except Exception as exc:  # noqa: BLE001  (the test looks at it)
        ended.append(exc)
    else:
        ended.append(None)


def role(d: Dispatcher) -> str:
    return str(d.status()["ha"]["role"])


async def current_lease(url: str):
    """The lease as the database has it, read through a store of its own (not either dispatcher's)."""
    store = open_store(url)
    leadership = store.leadership()
    assert leadership is not None
    try:
        return await leadership.current()
    finally:
        await leadership.aclose()


def task_rows(url: str) -> list[tuple]:
    """The tasks the journal holds (its change log applied, as a recovery would)."""
    return journal_rows(url, "SELECT id, state FROM trioschedule_tasks ORDER BY id")


async def test_one_leads_the_other_redirects_and_status_shows_both(postgres_url):
    a, b = dispatcher(postgres_url), dispatcher(postgres_url)
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            port_b = await nursery.start(serve, b, ended_b)
            await trio.sleep(LEASE)  # several polls: b must not take a live lease
            assert (role(a), role(b)) == ("leader", "standby")

            lease = await current_lease(postgres_url)
            assert lease is not None and lease.address == f"127.0.0.1:{port_a}"
            assert lease.holder == a.status()["ha"]["holder"]
            term = lease.term

            # A standby takes no work of its own either.
            assert not b.leading
            with pytest.raises(Rejected) as refused:
                await b.submit("nobody_offers_this")
            assert refused.value.code == "not-leader"

            # A standby answers a hello with not-leader, naming the leader.
            with pytest.raises(ConnectionClosed) as caught:
                await open_connection("127.0.0.1", port_b, role="client", token=None, ssl_context=None)
            assert caught.value.code == "not-leader"
            assert caught.value.leader == f"127.0.0.1:{port_a}"

            # The leader's status names itself, its term and the standby.
            await wait_for(lambda: a.status()["ha"]["standbys"], timeout=5)
            ha = a.status()["ha"]
            assert ha["role"] == "leader" and ha["term"] == term and ha["address"] == f"127.0.0.1:{port_a}"
            assert [s["address"] for s in ha["standbys"]] == [f"127.0.0.1:{port_b}"]
            assert 0 <= ha["standbys"][0]["seen_ago"] < 5
            assert b.status()["ha"] == {**b.status()["ha"], "role": "standby", "address": f"127.0.0.1:{port_a}"}

            # A client given both addresses, the standby's first, ends up on the leader and is served.
            async with open_client(addresses=[f"127.0.0.1:{port_b}", f"127.0.0.1:{port_a}"]) as client:
                handle = await client.submit("nobody_offers_this")
                assert handle.id in {row[0] for row in task_rows(postgres_url)}
            nursery.cancel_scope.cancel()
    assert (await current_lease(postgres_url)).term == term  # nobody took over meanwhile


def gauge(body: bytes, name: str) -> float:
    """The value of an unlabelled gauge in a /metrics page."""
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_the_operations_endpoint_serves_on_a_standby_too_and_says_who_leads(postgres_url):
    """A monitoring system sees every dispatcher up: a standby serves /api/status and /metrics, which
    name the leader; the one that takes over keeps serving on the same port."""
    a = dispatcher(postgres_url, http="127.0.0.1:0")
    b = dispatcher(postgres_url, http="127.0.0.1:0")
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            await nursery.start(serve, b, ended_b)
            assert b.http_port and not b.leading
            http_b = b.http_port
            await wait_for(lambda: b.status()["ha"]["address"], timeout=10)  # it read the lease once

            status = await api_status(http_b)
            assert status["ha"]["role"] == "standby" and status["ha"]["address"] == f"127.0.0.1:{port_a}"
            _, _, standby_metrics = await get(f"http://127.0.0.1:{http_b}/metrics")
            _, _, leader_metrics = await get(f"http://127.0.0.1:{a.http_port}/metrics")
            assert gauge(standby_metrics, "trioschedule_leading") == 0
            assert gauge(leader_metrics, "trioschedule_leading") == 1
            term = gauge(leader_metrics, "trioschedule_lease_term")
            assert term >= 1

            a.stop()  # a clean hand-over: b leads, on the same http port
            await wait_for(lambda: b.leading, timeout=10)
            assert b.http_port == http_b
            _, _, metrics = await get(f"http://127.0.0.1:{http_b}/metrics")
            assert gauge(metrics, "trioschedule_leading") == 1 and gauge(metrics, "trioschedule_lease_term") == term + 1
            assert (await api_status(http_b))["ha"]["role"] == "leader"
            nursery.cancel_scope.cancel()
    assert ended_a == [None]


async def test_clean_stop_resigns_and_the_standby_takes_over_at_once(postgres_url):
    a, b = dispatcher(postgres_url, lease_ttl=6.0), dispatcher(postgres_url, lease_ttl=6.0)
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            await nursery.start(serve, b, ended_b)
            handles = [await a.submit("nobody_offers_this", [i]) for i in range(5)]  # queued: nobody runs them
            term = (await current_lease(postgres_url)).term

            a.stop(grace=0.5)
            await wait_for(lambda: ended_a, timeout=10)
            stopped_at = trio.current_time()
            assert ended_a == [None]  # a clean stop, not a step-down
            await wait_for(lambda: b.leading, timeout=10)
            took = trio.current_time() - stopped_at
            # Resigned: b took over at its next poll (6/6 s), long before the 6 s lease could expire.
            assert took < 3.0, took
            lease = await current_lease(postgres_url)
            assert lease.term == term + 1 and lease.holder == b.status()["ha"]["holder"]
            # b recovered a's queue from the database.
            assert b.status()["tasks"]["queued"] == 5
            assert {h.id for h in handles} <= set(b._core.tasks)
            nursery.cancel_scope.cancel()


async def test_leader_that_cannot_renew_steps_down_by_itself(postgres_url):
    """The lease row locked by someone else: the leader's renewals fail, and it stops trusting its lease."""
    a, b = dispatcher(postgres_url), dispatcher(postgres_url)
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            await nursery.start(serve, b, ended_b)
            term = (await current_lease(postgres_url)).term
            blocker = psycopg.connect(postgres_url)  # a plain transaction, held open: returns at once
            try:
                blocker.execute("SELECT * FROM trioschedule_lease FOR UPDATE")  # the row stays locked until rollback
                blocked_at = trio.current_time()
                await wait_for(lambda: not a.leading, timeout=LEASE * 4)
                stepped = trio.current_time() - blocked_at
                # Within its trust window (ttl - margin after the last renewal it sent), with slack for a
                # loaded machine; well before the lease could expire for anyone else.
                assert stepped <= LEASE + 1.0, stepped
                await wait_for(lambda: ended_a, timeout=15)  # its journal's last flush waits on the locked row
                assert isinstance(ended_a[0], StoreFenced) and "could not be renewed" in str(ended_a[0])
                assert role(b) == "standby"  # nobody could take the row either
            finally:
                blocker.rollback()
                blocker.close()
            await wait_for(lambda: b.leading, timeout=LEASE * 4)
            assert (await current_lease(postgres_url)).term == term + 1
            with pytest.raises(RuntimeError, match="stepped down"):
                await a.serve()  # its state is gone: it cannot lead again
            nursery.cancel_scope.cancel()


async def test_a_leader_that_slept_through_a_takeover_writes_nothing(postgres_url):
    """The paused leader: its lease expired while it was not looking, and a standby took over.

    ``a`` renews rarely (a 30 s lease), so it still believes it leads when the
    lease is expired behind its back; its next journal write is fenced, writes
    nothing, and makes it step down.
    """
    a = dispatcher(postgres_url, lease_ttl=30.0)
    b = dispatcher(postgres_url)
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            port_b = await nursery.start(serve, b, ended_b)
            kept = await a.submit("nobody_offers_this", [1])
            before = task_rows(postgres_url)
            assert [row[0] for row in before] == [kept.id]
            term = (await current_lease(postgres_url)).term

            with psycopg.connect(postgres_url, autocommit=True) as conn:  # a's lease runs out "while it sleeps"
                conn.execute("UPDATE trioschedule_lease SET expires_at = now() - interval '1 second'")
            await wait_for(lambda: b.leading, timeout=10)
            assert role(a) == "leader"  # it has not looked yet (its next renewal is 10 s away)
            assert (await current_lease(postgres_url)).term == term + 1

            # a's next write is refused by the fence, and a steps down.
            with pytest.raises(StoreFenced):
                await a.submit("nobody_offers_this", [2], task_id="written-by-a-after-takeover")
            await wait_for(lambda: ended_a, timeout=10)
            assert isinstance(ended_a[0], StoreFenced) and "fenced" in str(ended_a[0]), ended_a
            assert task_rows(postgres_url) == before  # nothing of a's reached the database
            lease = await current_lease(postgres_url)
            assert lease.term == term + 1 and lease.address == f"127.0.0.1:{port_b}"
            # b recovered what a had accepted before it lost the lease.
            assert kept.id in b._core.tasks
            nursery.cancel_scope.cancel()
