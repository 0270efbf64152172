"""What one W1-shaped commit costs the PostgreSQL journal, today's way and as a change log (docs/PERFORMANCE.md).

    python benchmarks/pg_commit_shapes.py [--tasks 140] [--commits 400] [--fold 50]

Starts a PostgreSQL server in a temporary directory as the tests do (tests/postgres.py; it writes to
no other database, since it fills and empties the journal's tables).  It replays the
stream of operations a W1 run sends the journal, ``--tasks`` tasks per commit: each commit adds a
``map()`` chunk (``add_new_many``), records the start of the previous chunk (``update_running_many``,
two sessions) and forgets the one before (``forget``), with ``synchronous_commit = on``, the way the
store's writer commits (one pipelined transaction), two ways:

* ``tasks``: the store's own statements (:mod:`trioschedule._store.postgresql.batch`): every task is
  inserted, updated and deleted in the tasks table;
* ``log``: what a change log would commit instead: one row holding the commit's operations, and every
  ``--fold`` commits a checkpoint that applies the window's net effect to the tasks table (a task
  added and forgotten within the window costs only its ``DELETE``) and deletes the folded rows.  This
  is a measurement of the design, not a working store.

For each: the median wall time of a commit (and of a checkpoint), and per task the server's CPU (the
postmaster and every child, from /proc), this process's CPU and the wall time.  Nothing else runs, so
the wall time per task is the most a single writer could sustain on this machine.  Then it checks
that both ways left the same tasks in the table (exit status 1 if not): the checkpoint's shortcut
changes the cost, not the outcome.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trioschedule._json import json_encoder
from trioschedule._store.postgresql import batch as B
from trioschedule._store.postgresql import schema
from trioschedule._store.postgresql.writer import connect

TICK = os.sysconf("SC_CLK_TCK")
LOG_TABLE = "CREATE TABLE IF NOT EXISTS pgshapes_changes (seq bigint PRIMARY KEY, ops text NOT NULL)"


def server_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the given processes used so far; those gone count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def server_pids(postmaster: int | None) -> list[int]:
    if postmaster is None:
        return []
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return [postmaster, *children]


@contextmanager
def database() -> Iterator[tuple[str, int | None]]:
    sys.path.insert(0, str(REPO / "tests"))
    import postgres as pg  # tests/postgres.py

    with pg.running_server() as server:
        yield server.database(), server._postmaster_pid()


def transaction(conn: Any, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """As the writer commits: BEGIN, the statements and COMMIT in one pipelined round trip."""
    with conn.pipeline(), conn.cursor() as cur:
        cur.execute("BEGIN")
        for sql, params in statements:
            cur.execute(sql, params)
        cur.execute("COMMIT")


def w1_stream(tasks: int, commits: int) -> Iterator[list[tuple[Any, ...]]]:
    encode = json_encoder(check_circular=True)
    previous: list[str] = []
    before: list[str] = []
    half = tasks // 2
    for _ in range(commits):
        ids = [uuid.uuid4().hex[:22] for _ in range(tasks)]
        ops: list[tuple[Any, ...]] = [
            (B.ADD_MANY, ids, encode([[i, 1] for i in range(tasks)]), ("add", "{}", 0, None, None, None, time.time()))
        ]
        if previous:
            ops += [(B.RUNS, previous[:half], "session-1", 1, 0, 0), (B.RUNS, previous[half:], "session-2", 1, 0, 0)]
        ops += [(B.FORGET, task_id) for task_id in before]
        yield ops
        before, previous = previous, ids


def measure(conn: Any, pids: list[int], way: str, tasks: int, commits: int, fold: int) -> dict[str, float]:
    encode = json_encoder(check_circular=True)
    walls: list[float] = []
    folds: list[float] = []
    window: list[tuple[Any, ...]] = []
    cpu0, wall0, own0 = server_cpu(pids), time.perf_counter(), time.process_time()
    for seq, ops in enumerate(w1_stream(tasks, commits), 1):
        started = time.perf_counter()
        if way == "tasks":
            transaction(conn, B.statements(ops, encode)[0])
        else:
            text = encode([list(op) for op in ops])
            transaction(conn, [("INSERT INTO pgshapes_changes VALUES (%s, %s) ON CONFLICT (seq) DO NOTHING",
                                (seq, text))])  # fmt: skip
        walls.append(time.perf_counter() - started)
        if way == "log":
            window += ops
            if seq % fold == 0:
                started = time.perf_counter()
                checkpoint(conn, window, seq)
                folds.append(time.perf_counter() - started)
                window = []
    count = tasks * commits
    ended = {
        "commit_ms_p50": statistics.median(walls) * 1e3,
        "fold_ms_p50": statistics.median(folds) * 1e3 if folds else 0.0,
        "server_cpu_us_per_task": (server_cpu(pids) - cpu0) / count * 1e6,
        "client_cpu_us_per_task": (time.process_time() - own0) / count * 1e6,
        "wall_us_per_task": (time.perf_counter() - wall0) / count * 1e6,
    }
    if window:  # the rest of the log, untimed: then both ways must have left the same tasks
        checkpoint(conn, window, commits)
    return ended


def checkpoint(conn: Any, window: list[tuple[Any, ...]], seq: int) -> None:
    """Apply a window of the log: a task it adds and forgets costs only its DELETE; then drop the rows."""
    forgotten = {op[1] for op in window if op[0] == B.FORGET}
    kept = [op for op in window
            if not (op[0] in (B.ADD_MANY, B.RUNS) and all(map(forgotten.__contains__, op[1])))]  # fmt: skip
    statements = B.statements(kept, json_encoder(check_circular=True))[0]
    statements.append(("DELETE FROM pgshapes_changes WHERE seq <= %s", (seq,)))
    transaction(conn, statements)


def left(conn: Any) -> list[tuple[str, int]]:
    """What the tasks table holds: how many tasks in each state (the ids are random)."""
    return conn.execute("SELECT state, count(*) FROM trioschedule_tasks GROUP BY state ORDER BY state").fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=140, help="tasks per commit (140: a W1 commit's share)")
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--fold", type=int, default=50, help="commits between two checkpoints of the change log")
    args = parser.parse_args()
    with database() as (url, postmaster):
        conn = connect(url, application="trioschedule pg_commit_shapes", autocommit=True)
        pids = server_pids(postmaster)  # now that this connection's backend is one of them
        try:
            schema.prepare(conn, url)
            conn.execute(LOG_TABLE)
            conn.execute("SET synchronous_commit = on")
            conn.execute("SET enable_seqscan = off")  # as the writer
            states = {}
            for way in ("tasks", "log"):
                conn.execute("TRUNCATE trioschedule_tasks, pgshapes_changes")
                result = measure(conn, pids, way, args.tasks, args.commits, args.fold)
                states[way] = left(conn)
                print(f"{way:>5}: " + ", ".join(f"{key} {value:.2f}" for key, value in result.items()))
            # The stream leaves its last chunk queued and the one before running; the log, folded,
            # must leave exactly what the tasks table's own statements did.
            print(f"left in the tasks table: {states['tasks']}")
            if states["log"] != states["tasks"]:
                sys.exit(f"the change log left {states['log']}, the tasks table's statements {states['tasks']}")
        finally:
            conn.close()


if __name__ == "__main__":
    main()
