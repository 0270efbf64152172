"""``worker --processes N``: each child runs the same worker command, with the secret kept off its argv."""

from __future__ import annotations

import sys

from trioschedule.cli._parser import build_parser
from trioschedule.cli._supervisor import child_argv


def test_children_run_the_same_worker_command_as_one_process():
    parser = build_parser()
    args = parser.parse_args([
        "--log-level", "DEBUG", "worker", "app.py:Jobs", "--connect", "10.0.0.1:9000", "--concurrency", "3",
        "--prefetch", "2", "--processes", "4", "--name", "jobs", "--heartbeat-interval", "0.5",
        "--heartbeat-timeout", "3", "--drain-grace", "7", "--token", "s3cret", "--tls-ca", "ca.pem",
        "--tls-cert", "c.pem", "--tls-key", "k.pem",
    ])  # fmt: skip
    argv = child_argv(args)
    assert argv[:3] == [sys.executable, "-m", "trioschedule"]
    assert "s3cret" not in argv  # it travels in the environment: `ps` shows command lines
    child = parser.parse_args(argv[3:])
    assert (child.processes, child.name, child.token) == (1, None, None)  # one process each; supervise names it
    # Every other option, including one added later, reaches the children unchanged.
    assert {k: v for k, v in vars(child).items() if k not in ("processes", "name", "token")} == {
        k: v for k, v in vars(args).items() if k not in ("processes", "name", "token")
    }


def test_options_not_given_are_not_passed_on():
    parser = build_parser()
    args = parser.parse_args(["worker", "app.py:Jobs", "--processes", "2"])
    child = parser.parse_args(child_argv(args)[3:])
    assert vars(child) == {**vars(args), "processes": 1}


def test_children_get_every_dispatcher_address():
    parser = build_parser()
    args = parser.parse_args(["worker", "app.py:Jobs", "--processes", "2", "--connect", "10.0.0.1:9000,[::1]:9001"])
    child = parser.parse_args(child_argv(args)[3:])
    assert child.connect == args.connect == [("10.0.0.1", 9000), ("::1", 9001)]
