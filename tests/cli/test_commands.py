"""What each command builds from its arguments, and the exit codes main() gives for what went wrong."""

from __future__ import annotations

import inspect

import pytest

from trioschedule import Dispatcher, Worker
from trioschedule.cli import DEFAULT_STORE, main
from trioschedule.cli._commands import UsageError, build_dispatcher, build_worker
from trioschedule.cli._parser import build_parser

from ..processes import free_port


class RecordedDispatcher(Dispatcher):
    """Keeps the constructor call the command makes, and builds nothing."""

    def __init__(self, *args, **kwargs):
        self.call = inspect.signature(Dispatcher).bind(*args, **kwargs)  # refuses a keyword Dispatcher lacks


class RecordedWorker(Worker):
    def __init__(self, *args, **kwargs):
        self.call = inspect.signature(Worker).bind(*args, **kwargs)


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def departures_from_defaults(call: inspect.BoundArguments) -> dict[str, object]:
    """The arguments of ``call`` that differ from the constructor's own defaults."""
    parameters = call.signature.parameters
    return {name: value for name, value in call.arguments.items() if value != parameters[name].default}


@pytest.fixture(autouse=True)
def no_token_from_the_shell(monkeypatch):
    monkeypatch.delenv("TRIOSCHEDULE_TOKEN", raising=False)


def test_a_plain_dispatcher_command_is_the_plain_constructor_but_for_address_and_journal():
    dispatcher = build_dispatcher(RecordedDispatcher, parse("dispatcher"))
    # Deliberate: the command line listens on a well-known port and journals to a file; the API picks a free
    # port and keeps tasks in memory.  Everything else is the constructor's own default.
    assert departures_from_defaults(dispatcher.call) == {"port": 7311, "store": DEFAULT_STORE}


def test_a_plain_worker_command_is_the_plain_constructor():
    worker = build_worker(RecordedWorker, parse("worker", "m:C"))
    assert departures_from_defaults(worker.call) == {}


def test_options_reach_the_constructors():
    dispatcher = build_dispatcher(RecordedDispatcher, parse(
        "dispatcher", "--listen", "0.0.0.0:9000", "--store", "memory:", "--token", "t", "--heartbeat-interval", "0.5",
        "--heartbeat-timeout", "3", "--handshake-timeout", "4", "--session-grace", "6", "--drain-grace", "7",
        "--max-connections", "8", "--max-queued", "9", "--max-client-queued", "10", "--max-frame-size", "1024",
        "--max-losses", "1", "--result-ttl", "60", "--max-results", "11",
    ))  # fmt: skip
    assert departures_from_defaults(dispatcher.call) == {
        "host": "0.0.0.0", "port": 9000, "token": "t", "store": "memory:", "heartbeat_interval": 0.5,
        "heartbeat_timeout": 3.0, "handshake_timeout": 4.0, "session_grace": 6.0, "drain_grace": 7.0,
        "max_connections": 8, "max_queued": 9, "max_client_queued": 10, "max_frame_size": 1024,
        "max_losses": 1, "result_ttl": 60.0, "max_results": 11,
    }  # fmt: skip
    worker = build_worker(RecordedWorker, parse(
        "worker", "m:C", "--connect", "10.0.0.1:9000", "--concurrency", "4", "--prefetch", "2", "--name", "w",
        "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--drain-grace", "7", "--token", "t",
    ))  # fmt: skip
    assert departures_from_defaults(worker.call) == {
        "host": "10.0.0.1", "port": 9000, "token": "t", "concurrency": 4, "prefetch": 2, "name": "w",
        "heartbeat_interval": 0.5, "heartbeat_timeout": 3.0, "drain_grace": 7.0,
    }  # fmt: skip


def test_a_tls_key_without_a_certificate_is_a_usage_error():
    with pytest.raises(UsageError, match="--tls-key needs --tls-cert"):
        build_dispatcher(RecordedDispatcher, parse("dispatcher", "--tls-key", "key.pem"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["worker", "trioschedule:Dispatcher"], "trioschedule:Dispatcher is not a Worker subclass"),
     (["dispatcher", "trioschedule:Worker"], "trioschedule:Worker is not a Dispatcher subclass"),
     (["worker", "trioschedule:Worker", "--concurrency", "0"], "--concurrency and --processes must be at least 1"),
     (["worker", "no/such/file.py:W"], "no such file: no/such/file.py"),
     (["worker", "trioschedule"], "expected MODULE:CLASS"),
     (["submit", "127.0.0.1:1", "add", "--kwarg", "novalue"], "--kwarg expects NAME=VALUE")],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trioschedule: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["status", "stop"])
def test_no_dispatcher_there_exits_3_with_one_line(command, capsys):
    address = f"127.0.0.1:{free_port()}"
    assert main([command, address]) == 3
    err = capsys.readouterr().err
    assert err.startswith("trioschedule: ") and address in err and err.count("\n") == 1, err
