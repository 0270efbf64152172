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


async def test_the_testing_example_passes_as_written_in_a_fresh_directory(tmp_path):
    """examples/test_math.py is the README's testing snippet: copied alone, with no configuration, it passes."""
    source = Path(ROOT, "examples", "test_math.py").read_text()
    (tmp_path / "test_math.py").write_text(source)
    with trio.fail_after(120):
        done = await trio.run_process([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_math.py"],
                                      env=env(), cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert "2 passed" in output, output


def test_the_readme_testing_snippet_is_examples_test_math():
    """The README shows examples/test_math.py; the two must not drift apart."""
    readme = Path(ROOT, "README.md").read_text()
    section = readme[readme.index("### Testing your own tasks"):]
    snippet = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0]
    source = Path(ROOT, "examples", "test_math.py").read_text()
    assert source[source.index("import pytest"):].strip() == snippet.strip()
