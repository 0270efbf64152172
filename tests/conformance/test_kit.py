"""``python -m trioschedule conformance``: passes the example workers, fails broken ones with a clear message."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import trio

from trioschedule.cli import DEFAULT_ADDRESS
from trioschedule.cli._parser import build_parser, parse_address

from ..processes import ROOT, cli, env

BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken_worker.py")
PHP = shutil.which("php")


async def conformance(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(150):
        done = await trio.run_process(cli("conformance", *args), env=env(), cwd=ROOT, capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def verdicts(out: str) -> dict[str, str]:
    return {line.split(":")[0].split()[1]: line.split()[0] for line in out.splitlines() if line[:5] in ("PASS ", "FAIL ", "SKIP ")}


async def test_the_python_example_worker_passes_every_check():
    code, out, err = await conformance("--", sys.executable, "examples/worker.py", "start")
    assert code == 0, out + err
    assert set(verdicts(out).values()) == {"PASS"}, out
    assert len(verdicts(out)) == 12 and "12 passed, 0 failed, 0 skipped" in out


@pytest.mark.skipif(PHP is None, reason="php is not on PATH (.ci/run installs php-cli)")
async def test_the_php_example_worker_passes_in_the_minimal_profile():
    code, out, err = await conformance("--", PHP, "examples/php/worker.php")
    assert code == 0, out + err
    assert verdicts(out)["resume"] == "SKIP" and "the minimal profile" in out
    assert "11 passed, 0 failed, 1 skipped" in out


@pytest.mark.parametrize(("flaw", "check", "says"), [
    ("no-attempt", "result", "has attempt 0: copy attempt from the task's spec in run"),
    ("bad-status", "result", "has status 'done'; a worker reports one of ok, error, cancelled, timeout"),
    ("no-heartbeat", "heartbeat-idle", "send a heartbeat whenever silent for welcome.heartbeat"),
])  # fmt: skip
async def test_a_broken_worker_fails_with_a_clear_message(flaw, check, says):
    code, out, err = await conformance("--fail-fast", "--", sys.executable, BROKEN, flaw)
    assert code == 1, out + err
    assert verdicts(out)[check] == "FAIL", out
    [line] = [line for line in out.splitlines() if line.startswith(f"FAIL {check}:")]
    assert says in line, line
    assert "1 failed" in out


async def test_an_unknown_check_is_a_usage_error():
    code, _out, err = await conformance("--skip", "nonsense", "--", sys.executable, BROKEN, "no-attempt")
    assert code == 2 and "unknown check(s) nonsense" in err


def test_worker_connects_to_trioschedule_connect_when_given(monkeypatch):
    """The kit (and any launcher) passes the address in the environment; --connect still wins."""
    monkeypatch.setenv("TRIOSCHEDULE_CONNECT", "127.0.0.1:4321")
    assert build_parser().parse_args(["worker", "m:C"]).connect == [("127.0.0.1", 4321)]
    assert build_parser().parse_args(["worker", "m:C", "--connect", "10.0.0.1:5"]).connect == [("10.0.0.1", 5)]
    monkeypatch.delenv("TRIOSCHEDULE_CONNECT")
    assert build_parser().parse_args(["worker", "m:C"]).connect == [parse_address(DEFAULT_ADDRESS)]
