"""docs/systemd/*.service (shown in docs/OPERATIONS.md) pass ``systemd-analyze verify`` where it is installed.

``verify`` refuses an ExecStart= binary that does not exist, so the test
writes each unit with this interpreter in place of the documented
/opt/trioschedule/venv/bin/python.  The check is shown to fail on a broken
copy, so a unit that passes has really been read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .processes import ROOT

UNITS = os.path.join(ROOT, "docs", "systemd")
DOCUMENTED_PYTHON = "/opt/trioschedule/venv/bin/python"
NAMES = ("trioschedule-dispatcher.service", "trioschedule-worker.service")

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd); "
    "the units are still checked against docs/OPERATIONS.md",
)


def unit_text(name: str) -> str:
    with open(os.path.join(UNITS, name)) as f:
        return f.read()


def verify(tmp_path, name: str, text: str) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit: [] when it is clean."""
    path = tmp_path / name
    path.write_text(text.replace(DOCUMENTED_PYTHON, sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    said = [line for line in (done.stdout + done.stderr).splitlines() if name in line]
    if done.returncode != 0:
        said.append(f"exit code {done.returncode}")
    return said


@needs_systemd
@pytest.mark.parametrize("name", NAMES)
def test_the_documented_units_verify(tmp_path, name):
    assert verify(tmp_path, name, unit_text(name)) == []


@needs_systemd
@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (("ExecStart=", "ExecStrat="), "Unknown key"),
        (("KillMode=mixed", "KillMode=blend"), "kill mode"),
        ((DOCUMENTED_PYTHON, "/nonexistent/python"), "not executable"),
    ],
)
def test_the_check_fails_on_a_broken_unit(tmp_path, broken, expected):
    text = unit_text(NAMES[1]).replace(*broken)
    said = verify(tmp_path, NAMES[1], text)
    assert said and expected in " ".join(said), said


def test_the_units_are_the_ones_operations_md_shows():
    with open(os.path.join(ROOT, "docs", "OPERATIONS.md")) as f:
        operations = f.read()
    for name in NAMES:
        body = "\n".join(line for line in unit_text(name).splitlines() if not line.startswith("#"))
        assert body.strip() in operations, f"docs/OPERATIONS.md must show docs/systemd/{name} as it is"
    worker = unit_text(NAMES[1])
    assert "ExecReload=/bin/kill -HUP $MAINPID" in worker and "KillMode=mixed" in worker
