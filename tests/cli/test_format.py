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
             "address": "127.0.0.1:50000", "connected": True, "draining": False, "tasks": ["add", "resize"]},
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
        "name                host  pid  concurrency  running  done  failed  address          state      tasks     ",
        "w-0                 box   11   4            3        40    5       127.0.0.1:50000  connected  add,resize",
        "a-much-longer-name  box   12   1            0        0     0       127.0.0.1:50001  detached             ",
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


HA = {
    "role": "leader", "holder": "3f2a9c1be4d54a0f9d1c2b3a4e5f6071", "address": "10.0.0.1:7311", "term": 7,
    "standbys": [
        {"holder": "9e8d7c6b5a4f4e3d2c1b0a9f8e7d6c5b", "address": "10.0.0.2:7311", "seen_ago": 0.42},
        {"holder": "0a1b2c3d4e5f", "address": "10.0.0.3:7311", "seen_ago": 1.0},
    ],
}  # fmt: skip


def test_a_dispatcher_on_a_shared_store_shows_who_leads_its_term_and_its_standbys():
    lines = format_status(status_document(ha=HA, workers=[])).splitlines()
    assert lines[2:6] == [
        "ha: leader 10.0.0.1:7311  holder 3f2a9c1be4d5  term 7",
        "standbys: 2",
        "  10.0.0.2:7311  holder 9e8d7c6b5a4f  seen 0.4 s ago",
        "  10.0.0.3:7311  holder 0a1b2c3d4e5f  seen 1.0 s ago",
    ]
    assert lines[6] == "workers: 0   clients: 1"


def test_a_leader_with_no_standby_says_nothing_takes_over():
    lines = format_status(status_document(ha=dict(HA, standbys=[]), workers=[])).splitlines()
    assert lines[2:4] == [
        "ha: leader 10.0.0.1:7311  holder 3f2a9c1be4d5  term 7",
        "standbys: none alive (nothing takes over if this dispatcher dies)",
    ]


def test_without_a_shared_store_there_is_no_ha_block():
    assert "ha:" not in format_status(status_document())
    assert "ha:" not in format_status(status_document(ha=None))
