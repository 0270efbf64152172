"""The scheduling core never imports trio (STYLE.md habit 11): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trioschedule

PACKAGE_DIR = Path(trioschedule.__file__).parent

SCRIPT = r"""
import importlib.abc
import sys
import types

class NoTrio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "trio" or name.startswith("trio."):
            raise ImportError(f"the scheduling core imported {name}")
        return None

sys.meta_path.insert(0, NoTrio())
# A bare parent package: trioschedule/__init__.py imports trio, the core must not need it.
package = types.ModuleType("trioschedule")
package.__path__ = [sys.argv[1]]
sys.modules["trioschedule"] = package

import trioschedule._core.scheduler
import trioschedule._core.recovery

assert not any(n == "trio" or n.startswith("trio.") for n in sys.modules), sorted(sys.modules)
print("ok")
"""


def test_the_scheduling_core_imports_without_trio():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(PACKAGE_DIR)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_guard_would_notice_a_trio_import():
    """The same script fails when something in the chain imports trio (the test can fail)."""
    script = SCRIPT.replace("import trioschedule._core.recovery", "import trioschedule._core.recovery\nimport trio")
    done = subprocess.run([sys.executable, "-c", script, str(PACKAGE_DIR)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode != 0 and "imported trio" in done.stderr
