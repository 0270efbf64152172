"""The protocol core never imports trio: it runs under any event loop, or none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trioschedule._protocol

# trioschedule/__init__.py imports the dispatcher, which does use trio, so the
# program stands in an empty package for it and imports every module of
# trioschedule._protocol (and whatever they import) from the real files.
PROGRAM = """
import importlib, json, pkgutil, sys, types

package = types.ModuleType("trioschedule")
package.__path__ = [sys.argv[1]]
sys.modules["trioschedule"] = package
import trioschedule._protocol as protocol

names = [f"trioschedule._protocol.{info.name}" for info in pkgutil.iter_modules(protocol.__path__)]
for name in names:
    importlib.import_module(name)
trio = sorted(name for name in sys.modules if name == "trio" or name.startswith("trio."))
print(json.dumps({"imported": names, "trio": trio}))
"""


def test_the_protocol_core_never_imports_trio() -> None:
    package_dir = Path(trioschedule._protocol.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(package_dir)], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(result.stdout)
    assert "trioschedule._protocol.connection" in report["imported"]
    assert "trioschedule._protocol.messages" in report["imported"]
    assert report["trio"] == []
