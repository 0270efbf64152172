"""The public ways in: ``python -m trioschedule``, the console script and ``trioschedule.cli.main``."""

from __future__ import annotations

import importlib
import re
import sys

import trio

import trioschedule.cli

from ..processes import ROOT, env


def test_the_console_script_is_cli_main():
    with open(f"{ROOT}/pyproject.toml") as f:
        [target] = re.findall(r'^trioschedule = "([\w.:]+)"$', f.read(), re.MULTILINE)
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is trioschedule.cli.main


def test_the_public_names_are_documented():
    assert sorted(trioschedule.cli.__all__) == ["DEFAULT_ADDRESS", "DEFAULT_STORE", "format_status", "main"]
    for name in ("format_status", "main"):
        assert getattr(trioschedule.cli, name).__doc__, name


async def test_python_dash_m_runs_main():
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-m", "trioschedule", "stop", "--help"], env=env(), cwd=ROOT,
                                      capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("usage: trioschedule stop")
