"""What W1's commits cost the PostgreSQL journal: as a change log (the store's way) and the way it wrote before.

    python benchmarks/pg_commit_shapes.py [--tasks 140] [--commits 400] [--generation-seconds 5]

Starts a PostgreSQL server in a temporary directory as the tests do (tests/postgres.py; it writes to
no other database, since it fills and empties the journal's tables) with the store's schema
(``schema.prepare``).  It replays the stream of operations a W1 run sends the journal, ``--tasks``
tasks per commit: each commit adds a ``map()`` chunk (``add_new_many``), records the start of the
previous chunk (``update_running_many``, two sessions) and forgets the one before (``forget``), with
``synchronous_commit = on`` and one pipelined transaction per commit, as the store's writer commits.
Two ways:

* ``log``: what the store commits now (trioschedule/_store/postgresql/writer.py, ``_write``): the
  changelog's operations, the commit's one row of ``trioschedule_changes`` (``changelog.segments_text``,
  the writer's own insert), with the slice of checkpoint work ``PostgreSQLCheckpoints`` gives it in
  the same transaction; each committed batch is then folded into the current generation.  A
  generation is applied once it is ``--generation-seconds`` old (default: the store's
  ``GENERATION_SECONDS``); at the end a checkpoint of everything brings the tasks table up to date,
  as a closing store does.  A task added and forgotten within one generation never reaches the
  tasks table.  (At the default sizes the run is shorter than the store's generation: it is all one
  generation, applied by the final checkpoint.  ``--generation-seconds 0`` applies each commit's
  batch with the next commit, the most checkpoint work there can be.)
* ``tasks``: how the store wrote until schema version 4, kept to measure against
  (benchmarks/_pg_direct.py): every task inserted, updated and deleted in ``trioschedule_tasks``,
  in its commit's transaction.

For each: the median wall time of a commit, and of the commits that carried checkpoint work; how many
generations were applied during the run and how long the final checkpoint took; and per task the
server's CPU (the postmaster and every child, from /proc), this process's CPU and the wall time, all
of them including the final checkpoint (work the change log still owed).  Nothing else runs, so the
wall time per task is the most a single writer could sustain on this machine.  Both ways replay the
same tasks (the same ids, arguments and times); at the end the script checks that they left
``trioschedule_tasks`` exactly alike, every column of every row (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import os
import random
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

import _pg_direct as direct  # benchmarks/ is this script's directory, so on sys.path

from trioschedule._json import json_encoder
from trioschedule._store import changelog, generation
from trioschedule._store.changelog import ACCEPTED, FORGET, RUNS, Op
from trioschedule._store.postgresql import schema
from trioschedule._store.postgresql.checkpoint import PostgreSQLCheckpoints, Statement
from trioschedule._store.postgresql.writer import _LOG, connect  # _LOG: the writer's own insert, measured as is

TICK = os.sysconf("SC_CLK_TCK")
SEED = 20261206  # both ways replay the same task ids
COLUMNS = ("id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, "
           "failures, losses, session, outcome, finished_at")  # fmt: skip


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
    from tests import postgres as pg

    with pg.running_server() as server:
        yield server.database(), server._postmaster_pid()


def transaction(conn: Any, statements: list[Statement]) -> None:
    """As the writer commits (``JournalWriter._transaction``, unfenced): BEGIN, the statements and COMMIT
    in one pipelined round trip."""
    with conn.pipeline(), conn.cursor() as cur:
        cur.execute("BEGIN")
        for sql, params in statements:
            cur.execute(sql, params)
        cur.execute("COMMIT")


# One W1 commit, as the dispatcher asks it of the store: a chunk accepted (ids, their arguments,
# its submission time), the previous chunk started, the one before forgotten.
Chunk = tuple[list[str], list[Any], float, list[str], list[str]]


def w1_stream(tasks: int, commits: int, start: float) -> Iterator[Chunk]:
    ids_from = random.Random(SEED)
    previous: list[str] = []
    before: list[str] = []
    for seq in range(commits):
        ids = [uuid.UUID(int=ids_from.getrandbits(128)).hex[:22] for _ in range(tasks)]
        yield ids, [[i, 1] for i in range(tasks)], start + seq * 1e-3, previous, before
        before, previous = previous, ids


def sessions(running: list[str]) -> list[tuple[list[str], str]]:
    half = len(running) // 2
    return [(running[:half], "session-1"), (running[half:], "session-2")] if running else []


def log_ops(chunk: Chunk, encode: changelog.Encode) -> list[Op]:
    """What the store's Trio side buffers for one W1 commit (trioschedule/_store/threaded.py)."""
    ids, args, submitted_at, running, forgotten = chunk
    # add_new_many(): one group, its shared fields once, encoded in one call.
    items: list[Any] = [None] * (2 * len(ids))
    items[::2], items[1::2] = ids, args
    ops: list[Op] = [(ACCEPTED, ids, encode(("add", {}, 0, None, None, None, submitted_at, items)), {})]
    ops += [(RUNS, group, session, 1, 0, 0) for group, session in sessions(running)]  # update_running_many()
    ops += [(FORGET, task_id) for task_id in forgotten]  # forget()
    return ops


def direct_ops(chunk: Chunk, encode: changelog.Encode) -> list[Op]:
    """What the store's Trio side buffered for one W1 commit until schema version 4."""
    ids, args, submitted_at, running, forgotten = chunk
    ops: list[Op] = [(direct.ADD_MANY, ids, encode(args), ("add", encode({}), 0, None, None, None, submitted_at))]
    ops += [(direct.RUNS, group, session, 1, 0, 0) for group, session in sessions(running)]
    ops += [(direct.FORGET, task_id) for task_id in forgotten]
    return ops


def measure(conn: Any, pids: list[int], way: str, tasks: int, commits: int, start: float) -> dict[str, float | int]:
    trio_encode = json_encoder(check_circular=True)  # the Trio side's
    encode = json_encoder(check_circular=True)  # the writer's
    checkpoints = PostgreSQLCheckpoints(encode)
    walls: list[float] = []
    slice_walls: list[float] = []
    final = 0.0
    cpu0, wall0, own0 = server_cpu(pids), time.perf_counter(), time.process_time()
    for seq, chunk in enumerate(w1_stream(tasks, commits, start), 1):
        # A commit's wall time: the writer's side only (the Trio side built its operations before).
        if way == "tasks":
            ops = direct_ops(chunk, trio_encode)
            started = time.perf_counter()
            transaction(conn, direct.statements(ops, encode))
            walls.append(time.perf_counter() - started)
            continue
        # The writer's _write: the batch as one change-log row, and a checkpoint slice with it.
        batch = log_ops(chunk, trio_encode)
        started = time.perf_counter()
        text, _, _ = changelog.segments_text(batch, encode)
        statements: list[Statement] = [(_LOG, (seq, text))]
        entries, last = checkpoints.slice_for_commit(len(batch))
        checkpoints.apply_slice(statements, entries, last)
        transaction(conn, statements)
        checkpoints.sliced(last)
        walls.append(time.perf_counter() - started)
        if entries or last:
            slice_walls.append(walls[-1])
        checkpoints.fold(batch, seq)  # after the commit, as the writer loop does
    applied = checkpoints.count
    if way == "log":  # as a closing store: the rest of the change log into the tasks table
        started = time.perf_counter()
        statements = []
        checkpoints.run(statements, everything=True)
        transaction(conn, statements)
        final = time.perf_counter() - started
    count = tasks * commits
    return {
        "commit_ms_p50": statistics.median(walls) * 1e3,
        "slice_commit_ms_p50": statistics.median(slice_walls) * 1e3 if slice_walls else 0.0,
        "checkpoints": applied,
        "final_checkpoint_ms": final * 1e3,
        "server_cpu_us_per_task": (server_cpu(pids) - cpu0) / count * 1e6,
        "client_cpu_us_per_task": (time.process_time() - own0) / count * 1e6,
        "wall_us_per_task": (time.perf_counter() - wall0) / count * 1e6,
    }


def left(conn: Any) -> list[tuple[Any, ...]]:
    """Every row of the tasks table (but its ``seq``: the identity's numbers go on across the ways)."""
    return conn.execute(f"SELECT {COLUMNS} FROM trioschedule_tasks ORDER BY id").fetchall()


def states(rows: list[tuple[Any, ...]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[9]] = counts.get(row[9], 0) + 1
    return sorted(counts.items())


def figure(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=140, help="tasks per commit (140: a W1 commit's share)")
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--generation-seconds", type=float, default=generation.GENERATION_SECONDS,
                        help="age at which a generation of the change log is applied (default: the store's, "
                             "%(default)s s; 0: every commit applies the one before)")  # fmt: skip
    args = parser.parse_args()
    generation.GENERATION_SECONDS = args.generation_seconds
    with database() as (url, postmaster):
        conn = connect(url, application="trioschedule pg_commit_shapes", autocommit=True)
        pids = server_pids(postmaster)  # now that this connection's backend is one of them
        try:
            schema.prepare(conn, url)
            conn.execute("SET synchronous_commit = on")  # as the writer
            conn.execute("SET enable_seqscan = off")
            rows = {}
            start = time.time()  # the first chunk's submission time, the same for both ways
            for way in ("tasks", "log"):
                conn.execute("TRUNCATE trioschedule_tasks, trioschedule_changes")
                result = measure(conn, pids, way, args.tasks, args.commits, start)
                rows[way] = left(conn)
                print(f"{way:>5}: " + ", ".join(f"{key} {figure(value)}" for key, value in result.items()))
            # The stream leaves its last chunk queued and the one before running; the change log,
            # checkpointed, must leave exactly what the direct statements did.
            print(f"left in the tasks table: {states(rows['tasks'])}")
            if rows["log"] != rows["tasks"]:
                differ = sum(a != b for a, b in zip(rows["log"], rows["tasks"]))
                sys.exit(f"the two ways left different tasks: the change log {states(rows['log'])}, the direct "
                         f"statements {states(rows['tasks'])}, {differ} row(s) of those differ")  # fmt: skip
            (unapplied,) = conn.execute("SELECT count(*) FROM trioschedule_changes").fetchone() or (0,)
            if unapplied:
                sys.exit(f"the final checkpoint left {unapplied} row(s) in trioschedule_changes")
            print(f"both ways left the same {len(rows['log'])} tasks, every column alike")
        finally:
            conn.close()


if __name__ == "__main__":
    main()
