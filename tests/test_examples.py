"""The examples and the README's demo run as a new user would run them."""

from __future__ import annotations

import ast
import os
import sys

import trio

from .processes import ROOT, env, free_port, processes, wait_for


async def _run(*argv: str, timeout: float = 90) -> tuple[int, str]:
    with trio.fail_after(timeout):
        done = await trio.run_process([sys.executable, *argv], env=env(), cwd=ROOT, capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def test_examples_use_only_public_api():
    """Users copy the examples: they must not lean on anything that may change without notice."""
    directory = os.path.join(ROOT, "examples")
    private = []
    for filename in sorted(f for f in os.listdir(directory) if f.endswith(".py")):
        with open(os.path.join(directory, filename)) as f:
            tree = ast.parse(f.read(), filename)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            private += [f"{filename}: {name}" for name in names if name.startswith("trioschedule") and "._" in name]
    assert not private, private


async def test_demo_runs_and_reports_what_happened():
    code, output = await _run(os.path.join("examples", "demo.py"))
    assert code == 0, output
    for expected in ("map: 500 add tasks -> sum 249500", "TaskFailed: RuntimeError: this task fails on purpose",
                     "message from", "cancelled over the wire", "workers: 2", "dispatcher exited with code 0"):  # fmt: skip
        assert expected in output, (expected, output)


async def test_embedded_example():
    code, output = await _run(os.path.join("examples", "embedded.py"))
    assert code == 0, output
    assert "squares: [0, 1, 4, 9" in output and "from the dispatcher itself: 144" in output


async def test_workerman_style_scripts(tmp_path):
    port = free_port()
    with processes(tmp_path) as procs:
        dispatcher = [os.path.join(ROOT, "examples", "dispatcher.py"), "start", "--listen", f"127.0.0.1:{port}"]
        procs.procs.append(trio_popen([*dispatcher, "--store", "memory:"], tmp_path))
        procs.procs.append(trio_popen([os.path.join(ROOT, "examples", "worker.py"), "start", "--connect", f"127.0.0.1:{port}"], tmp_path))

        async def answered():
            result = await procs.run("submit", f"127.0.0.1:{port}", "add", "20", "22", "--wait", timeout=30)
            return result.returncode == 0 and result.stdout.strip() == "42"

        assert await wait_for(answered, timeout=30, interval=0.3)
        result = await procs.run("submit", f"127.0.0.1:{port}", "--wait", "--", "run_command", "echo", "-n", "safe")
        assert '"stdout": "safe"' in result.stdout
        code, output = await _run(os.path.join("examples", "dispatcher.py"), "status", f"127.0.0.1:{port}")
        assert code == 0 and "workers: 1" in output, output
        assert "schedules: 1" in output and "every-minute" in output, output  # declared in on_start
        code, output = await _run(os.path.join("examples", "dispatcher.py"), "stop", f"127.0.0.1:{port}")
        assert code == 0, output


def trio_popen(argv, cwd):
    import subprocess

    return subprocess.Popen([sys.executable, *argv], env=env(), cwd=str(cwd), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
