"""The README's API tour runs as written (so it cannot rot)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio

from .processes import ROOT, env


async def test_the_readme_tour_runs():
    tour = re.findall(r"```python\n(.*?)```", Path(ROOT, "README.md").read_text(), re.DOTALL)[0]
    assert "trio.run(main)" in tour
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", tour], env=env(), cwd=ROOT, capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["3"]  # Boss.on_start printed call("add", 1, 2)
