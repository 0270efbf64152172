"""A Hypothesis property: whatever happens to workers and connections, every task ends exactly once.

Hypothesis draws a schedule of submits, cancels, worker kills, cut and
partitioned connections, new workers and the passing of time; the scenario
runs on the in-memory cluster under a mock clock.  At the end every
partition is healed and a worker is present, and each task must have exactly
one outcome: reported once by the dispatcher, seen once by the client, and a
correct value whenever it is ``ok``.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioschedule import Dispatcher
from trioschedule.testing import open_cluster

from .conftest import MathWorker

operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 8)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("kill"), st.integers(0, 5)),
        st.tuples(st.just("cut"), st.integers(0, 5)),
        st.tuples(st.just("stall"), st.integers(0, 5)),
        st.tuples(st.just("resume"), st.integers(0, 5)),
        st.tuples(st.just("cut-client"), st.just(0)),
        st.tuples(st.just("worker"), st.integers(0, 2)),
        st.tuples(st.just("sleep"), st.integers(0, 12)),
    ),
    min_size=3,
    max_size=40,
)


class Recording(Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reported: Counter[str] = Counter()

    async def on_task_done(self, task_id, name, outcome):
        self.reported[task_id] += 1


async def scenario(ops):
    dispatcher = Recording(heartbeat_interval=1, heartbeat_timeout=4, session_grace=2, max_losses=2, retry_backoff=0.1)
    counter = 0
    async with open_cluster(dispatcher, MathWorker(name="w0", concurrency=2)) as cluster:
        async with cluster.client() as client:
            handles = []
            for op, arg in ops:
                workers = cluster.workers
                if op == "submit":
                    handles.append((await client.submit("sleep", [arg, arg], retries=1), arg))
                elif op == "cancel" and handles:
                    await handles[arg % len(handles)][0].cancel("drawn")
                elif op in ("kill", "cut", "stall", "resume") and workers:
                    worker = workers[arg % len(workers)]
                    getattr(cluster, op)(worker)
                elif op == "cut-client":
                    cluster.cut(client)
                elif op == "worker":
                    counter += 1
                    await cluster.start_worker(MathWorker(name=f"n{counter}", concurrency=arg + 1))
                elif op == "sleep":
                    await trio.sleep(arg)
            for worker in list(cluster._stalled):
                cluster.resume(worker)
            await cluster.start_worker(MathWorker(name="final", concurrency=4))
            with trio.fail_after(10_000):
                outcomes = [(await h.outcome(), value) for h, value in handles]
            await trio.sleep(1)
    for outcome, value in outcomes:
        assert outcome.status in ("ok", "cancelled", "lost", "error", "timeout"), outcome
        if outcome.status == "ok":
            assert outcome.value == value
    ids = [h.id for h, _ in handles]
    assert len(set(ids)) == len(ids)
    assert all(dispatcher.reported[i] == 1 for i in ids), dispatcher.reported
    status = dispatcher.status()["tasks"]
    assert sum(status[k] for k in ("done", "failed", "cancelled", "timeout", "lost")) == len(ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_every_task_ends_exactly_once(ops):
    trio.run(scenario, ops, clock=trio.testing.MockClock(autojump_threshold=0))
