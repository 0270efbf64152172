"""The status page ships in the wheel: built from this tree, the wheel holds page.html and the new dependencies."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]


async def test_the_wheel_carries_the_page_and_declares_h11_and_prometheus_client(tmp_path):
    source = tmp_path / "source"  # a copy: building in the work tree would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "trioschedule", source / "trioschedule", ignore=shutil.ignore_patterns("__pycache__"))
    with trio.fail_after(300):
        done = await trio.run_process(
            [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path)],
            cwd=str(tmp_path), capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (wheel,) = tmp_path.glob("trioschedule-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        page = archive.read("trioschedule/_http/page.html").decode()
        metadata = next(archive.read(n) for n in archive.namelist() if n.endswith("/METADATA")).decode()
    assert page == (ROOT / "trioschedule" / "_http" / "page.html").read_text(encoding="utf-8")
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any("h11" in line for line in requires) and any("prometheus-client" in line for line in requires), requires
