"""The ``trioschedule status`` table."""

from __future__ import annotations

from trioschedule.cli import format_status


def status_document(**changes):
    document = {
        "name": "dispatcher", "pid": 4242, "address": "127.0.0.1:7311", "uptime": 90061.7,
        "store": "sqlite:trioschedule.sqlite3", "draining": False,
        "tasks": {"queued": 1, "delayed": 2, "running": 3, "done": 40, "failed": 5, "cancelled": 6, "timeout": 7,
                  "lost": 8},
        "waiting_for_worker": {},
        "workers": [
            {"name": "w-0", "host": "box", "pid": 11, "concurrency": 4, "running": 3, "done": 40, "failed": 5,
             "restarts": 2, "address": "127.0.0.1:50000", "connected": True, "draining": False, "tasks": ["add", "resize"]},
            {"name": "a-much-longer-name", "host": "box", "pid": 12, "concurrency": 1, "running": 0, "done": 0,
             "failed": 0, "address": "127.0.0.1:50001", "connected": False, "draining": False},
        ],
        "clients": [{"name": "cli"}],
    }  # fmt: skip
    document.update(changes)
    return document


def test_the_table_shows_counts_and_one_aligned_row_per_worker():
    assert format_status(status_document()).splitlines() == [
        "trioschedule dispatcher  pid 4242  127.0.0.1:7311  uptime 1d 1:01:01  store sqlite:trioschedule.sqlite3",
        "tasks: queued 1  delayed 2  running 3  done 40  failed 5  cancelled 6  timeout 7  lost 8",
        "workers: 2   clients: 1",
        "name                host  pid  concurrency  running  done  failed  restarts  address          state      tasks     ",
        "w-0                 box   11   4            3        40    5       2         127.0.0.1:50000  connected  add,resize",
        "a-much-longer-name  box   12   1            0        0     0       0         127.0.0.1:50001  detached             ",
    ]


def test_draining_and_tasks_no_worker_offers_are_called_out():
    text = format_status(status_document(draining=True, waiting_for_worker={"resize": 3, "encode": 1}, workers=[]))
    lines = text.splitlines()
    assert lines[0].endswith("  DRAINING")
    assert lines[2] == "waiting for a worker that offers them: encode (1), resize (3)"
    assert lines[3] == "workers: 0   clients: 1" and len(lines) == 4


def test_a_draining_worker_says_so():
    worker = dict(status_document()["workers"][0], draining=True)
    assert format_status(status_document(workers=[worker])).splitlines()[-1].split()[-2] == "draining"
