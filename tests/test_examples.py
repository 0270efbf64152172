"""The examples and the README's demo run as a new user would run them."""

from __future__ import annotations

import ast
import os
import sys

import trio

from trioschedule import open_client

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


async def test_workerman_verbs_start_status_reload_restart_stop(tmp_path):
    """The examples' verbs, each as a user types it in a directory of their own (the pid files live there)."""
    port = free_port()
    here = str(tmp_path)
    dispatcher_py, worker_py = (os.path.join(ROOT, "examples", name) for name in ("dispatcher.py", "worker.py"))

    async def verb(script, *args, timeout=90):
        with trio.fail_after(timeout):
            done = await trio.run_process([sys.executable, script, *args], env=env(), cwd=here, capture_stdout=True,
                                          capture_stderr=True, check=False)  # fmt: skip
        return done.returncode, done.stdout.decode() + done.stderr.decode()

    def pid_in(name):
        with open(os.path.join(here, name)) as f:
            return int(f.read())

    async def serving_pids():
        async with open_client("127.0.0.1", port, role="admin", reconnect_attempts=0) as admin:
            document = await admin.status()
        return {w["pid"] for w in document["workers"] if w["connected"] and not w["draining"]}

    listen = ["--listen", f"127.0.0.1:{port}", "--store", "memory:"]
    with processes(tmp_path) as procs:
        first = trio_popen([dispatcher_py, "start", *listen], tmp_path)
        procs.procs.append(first)
        await wait_for(lambda: os.path.exists(os.path.join(here, "dispatcher.pid")), timeout=30)
        assert pid_in("dispatcher.pid") == first.pid
        supervisor = trio_popen([worker_py, "start", "--connect", f"127.0.0.1:{port}", "--processes", "2"], tmp_path)
        procs.procs.append(supervisor)
        old = await wait_for(lambda: _two(serving_pids()), timeout=60, interval=0.3)
        assert pid_in("worker.pid") == supervisor.pid

        code, output = await verb(worker_py, "start", "--connect", f"127.0.0.1:{port}")
        assert code == 1 and f"already running (pid {supervisor.pid}" in output, output
        code, output = await verb(worker_py, "status", f"127.0.0.1:{port}")
        assert code == 0 and f"supervisor pid {supervisor.pid}" in output and "workers: 2" in output, output
        assert "restarts" in output and all(str(pid) in output for pid in old), output

        code, output = await verb(worker_py, "reload")
        assert code == 0 and "reload requested" in output, output
        new = await wait_for(lambda: _two(serving_pids(), exclude=old), timeout=90, interval=0.3)
        assert new.isdisjoint(old)

        code, output = await verb(dispatcher_py, "reload")
        assert code == 2 and "nothing to reload" in output, output
        code, output = await verb(dispatcher_py, "status", f"127.0.0.1:{port}")
        assert code == 0 and "workers: 2" in output, output

        # restart: stop the running dispatcher (by its pid file), then start again in this process.
        second = trio_popen([dispatcher_py, "restart", *listen], tmp_path)
        procs.procs.append(second)
        with trio.fail_after(60):
            assert await trio.to_thread.run_sync(first.wait) == 0
        await wait_for(lambda: os.path.exists(os.path.join(here, "dispatcher.pid")) and pid_in("dispatcher.pid") == second.pid,
                       timeout=30)  # fmt: skip
        await wait_for(lambda: _two(serving_pids()), timeout=60, interval=0.3)  # the workers came back

        code, output = await verb(worker_py, "stop")
        assert code == 0 and f"pid {supervisor.pid} stopped" in output, output
        assert supervisor.poll() == 0 and not os.path.exists(os.path.join(here, "worker.pid"))
        code, output = await verb(dispatcher_py, "stop")
        assert code == 0 and f"pid {second.pid} stopped" in output, output
        assert second.poll() == 0 and not os.path.exists(os.path.join(here, "dispatcher.pid"))
        code, output = await verb(worker_py, "stop")
        assert code == 1 and "not running" in output, output


async def _two(pids_coroutine, exclude=frozenset()):
    try:
        pids = await pids_coroutine - set(exclude)
    except Exception:  # noqa: BLE001 - not listening yet, or restarting
        return None
    return pids if len(pids) == 2 else None
