"""The command line's options: addresses, task arguments, and defaults declared once."""

from __future__ import annotations

import argparse
import ast
import inspect

import pytest

from trioschedule import Dispatcher, Worker, _defaults, open_client
from trioschedule.cli import DEFAULT_ADDRESS, DEFAULT_STORE, _parser
from trioschedule.cli._commands import COMMANDS
from trioschedule.cli._parser import build_parser, parse_address, parse_arg

# Command -> {option dest: the _defaults name it mirrors}.
MIRRORED = {
    "dispatcher": {
        "heartbeat_interval": "HEARTBEAT_INTERVAL", "heartbeat_timeout": "HEARTBEAT_TIMEOUT",
        "handshake_timeout": "HANDSHAKE_TIMEOUT", "session_grace": "SESSION_GRACE", "drain_grace": "DRAIN_GRACE",
        "max_connections": "MAX_CONNECTIONS", "max_queued": "MAX_QUEUED", "max_client_queued": "MAX_CLIENT_QUEUED",
        "max_frame_size": "MAX_FRAME_SIZE", "max_losses": "MAX_LOSSES", "result_ttl": "RESULT_TTL",
        "max_results": "MAX_RESULTS",
    },
    "worker": {
        "concurrency": "CONCURRENCY", "heartbeat_interval": "HEARTBEAT_INTERVAL",
        "heartbeat_timeout": "HEARTBEAT_TIMEOUT", "drain_grace": "DRAIN_GRACE", "blocked_warning": "BLOCKED_WARNING",
    },
}  # fmt: skip
CONSTRUCTORS = {"dispatcher": Dispatcher, "worker": Worker}


def defaults_of(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:7311", ("127.0.0.1", 7311)), ("0.0.0.0:0", ("0.0.0.0", 0)), (":8000", ("0.0.0.0", 8000)),
     ("8000", ("127.0.0.1", 8000)), ("[::1]:7311", ("::1", 7311)), ("example.org:65535", ("example.org", 65535))],
)  # fmt: skip
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(("text", "complaint"), [("host:http", "expected HOST:PORT"), ("host:65536", "out of range"),
                                                 ("host:-1", "out of range"), ("", "expected HOST:PORT")])  # fmt: skip
def test_parse_address_refuses_with_a_reason(text, complaint):
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        parse_address(text)


def test_task_arguments_are_json_when_they_parse_else_strings():
    assert [parse_arg(a) for a in ["1", "2.5", "true", "null", '{"a": [1]}', "hello", "1 2", '"quoted"']] == [
        1, 2.5, True, None, {"a": [1]}, "hello", "1 2", "quoted"
    ]  # fmt: skip


def test_every_command_has_something_that_runs_it():
    [subcommands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(MIRRORED))
def test_cli_defaults_are_the_declared_defaults(command):
    args = defaults_of(command, "mod:Class")
    for dest, name in MIRRORED[command].items():
        assert getattr(args, dest) == getattr(_defaults, name), (command, dest, name)


@pytest.mark.parametrize("command", sorted(MIRRORED))
def test_constructor_defaults_are_the_declared_defaults(command):
    """The other half: ``Dispatcher(...)``/``Worker(...)`` default to the same values as their options."""
    parameters = inspect.signature(CONSTRUCTORS[command]).parameters
    for dest, name in MIRRORED[command].items():
        assert parameters[dest].default == getattr(_defaults, name), (command, dest, name)


def test_addresses_and_store_come_from_the_declared_defaults():
    assert (DEFAULT_ADDRESS, DEFAULT_STORE) == (_defaults.ADDRESS, _defaults.CLI_STORE)
    assert [defaults_of("dispatcher").listen] == defaults_of("worker", "m:C").connect == [parse_address(DEFAULT_ADDRESS)]
    assert defaults_of("dispatcher").store == DEFAULT_STORE
    # Workers and clients built in Python connect where the command line's dispatcher listens by default.
    for connect in (Worker, open_client):
        parameters = inspect.signature(connect).parameters
        assert (parameters["host"].default, parameters["port"].default) == parse_address(DEFAULT_ADDRESS)


def test_options_left_out_are_left_to_the_api():
    worker = defaults_of("worker", "m:C")
    submit = defaults_of("submit", "h:1", "add")
    assert worker.prefetch is None and worker.name is None
    assert (submit.timeout, submit.retries, submit.delay, submit.priority) == (None, None, None, None)


def test_no_numeric_default_is_written_twice():
    """Numbers in the parser's defaults are read from _defaults; only options the API lacks may hold one."""
    cli_only = {"--processes"}
    literal = []
    for node in ast.walk(ast.parse(inspect.getsource(_parser))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for keyword in node.keywords:
                value = keyword.value
                is_number = isinstance(value, ast.Constant) and type(value.value) in (int, float)
                flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
                if keyword.arg == "default" and is_number and flag not in cli_only:
                    literal.append(flag)
    assert not literal, f"write these defaults in trioschedule/_defaults.py: {literal}"


def test_every_command_that_reaches_a_dispatcher_takes_an_address_list():
    from trioschedule.cli._parser import parse_addresses

    both = "127.0.0.1:7311,[::1]:7312"
    expected = [("127.0.0.1", 7311), ("::1", 7312)]
    parser = build_parser()
    for argv in (["submit", both, "add"], ["result", both, "id"], ["cancel", both, "id"], ["broadcast", both, "{}"],
                 ["status", both], ["tasks", both], ["stop", both], ["worker", "m:C", "--connect", both]):  # fmt: skip
        args = parser.parse_args(argv)
        assert (args.connect if argv[0] == "worker" else args.address) == expected, argv
        if argv[0] != "worker":
            assert args.leader_wait == 15.0
    assert parse_addresses("a:1,a:1,b:2") == [("a", 1), ("b", 2)]
    for bad in ("a:1,", ",a:1", "a:1,,b:2", "a:1,b"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_addresses(bad)
