"""The public ways in: ``python -m trioschedule``, the console script and ``trioschedule.cli.main``."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
import trio

import trioschedule.cli

from ..processes import ROOT, env


def test_the_console_script_is_cli_main():
    with open(f"{ROOT}/pyproject.toml") as f:
        [target] = re.findall(r'^trioschedule = "([\w.:]+)"$', f.read(), re.MULTILINE)
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is trioschedule.cli.main


def test_the_public_names_are_documented():
    assert sorted(trioschedule.cli.__all__) == ["DEFAULT_ADDRESS", "DEFAULT_STORE", "format_status", "main", "run_script"]
    for name in ("format_status", "main", "run_script"):
        assert getattr(trioschedule.cli, name).__doc__, name


async def test_python_dash_m_runs_main():
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-m", "trioschedule", "stop", "--help"], env=env(), cwd=ROOT,
                                      capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("usage: trioschedule stop")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [([], "usage: python "), (["start", "-d"], "does not fork into the background; run it under systemd"),
     (["kill"], "start|stop|restart|reload|status")],
)
def test_a_script_names_itself_in_usage_and_errors(argv, needle, capsys):
    from trioschedule import Dispatcher
    from trioschedule.cli import run_script

    assert run_script(Dispatcher, argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
