"""The README's API tour runs as written (so it cannot rot)."""

from __future__ import annotations

import os
import re
import sys

import trio

from .processes import ROOT, env


async def test_the_readme_tour_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        tour = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    assert "trio.run(main)" in tour
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", tour], env=env(), cwd=ROOT, capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["3"]  # Boss.on_start printed call("add", 1, 2)
