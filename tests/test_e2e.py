"""Real processes on 127.0.0.1, started through the command line, as a user would run them."""

from __future__ import annotations

import functools
import glob
import json
import os
import signal

import pytest
import trio

from trioschedule import TaskFailed, open_client

from .processes import free_port, processes, wait_for


async def _status(procs, port):
    result = await procs.run("status", f"127.0.0.1:{port}", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _workers_connected(procs, port, count):
    return await wait_for(lambda: _count_workers(procs, port, count), timeout=30, interval=0.3)


async def _count_workers(procs, port, count):
    status = await _status(procs, port)
    connected = [w for w in status["workers"] if w["connected"]]
    return connected if len(connected) >= count else None


def _records(tmp_path, kind):
    out = []
    for path in glob.glob(os.path.join(tmp_path, f"{kind}-*.jsonl")):
        pid = int(path.rsplit("-", 1)[1].split(".")[0])
        with open(path) as f:
            out += [(pid, json.loads(line)) for line in f]
    return out


async def test_cli_cluster_end_to_end(tmp_path):
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        dispatcher, port = await procs.start_dispatcher("--store", "memory:")
        procs.start_worker(port, "--processes", "2", name="workers")
        workers = await _workers_connected(procs, port, 2)
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2

        result = await procs.run("submit", f"127.0.0.1:{port}", "add", "2", "3", "--wait")
        assert (result.returncode, result.stdout.strip()) == (0, "5")
        result = await procs.run("submit", f"127.0.0.1:{port}", "add", '"a"', "b", "--wait")
        assert json.loads(result.stdout) == "ab"
        result = await procs.run("submit", f"127.0.0.1:{port}", "fail", "custom message", "--wait")
        assert result.returncode == 1
        assert "RuntimeError: custom message" in result.stderr

        async with open_client("127.0.0.1", port) as client:
            assert await client.map("add", [(i, 1) for i in range(500)]) == [i + 1 for i in range(500)]
            assert await client.call("frozen") > 0, "the worker command froze its start-up objects (gc.freeze)"
            with pytest.raises(TaskFailed, match="from a client"):
                await client.call("fail", "from a client")
            await client.broadcast({"hello": "workers"})
            got = await wait_for(lambda: {pid for pid, r in _records(tmp_path, "message")} == pids or None)
            assert got
            acks = await wait_for(lambda: len(_records(tmp_path, "dispatcher-message")) == 2 or None)
            assert acks
        status = await _status(procs, port)
        assert status["tasks"]["done"] == 503 and status["tasks"]["failed"] == 2
        assert all(w["done"] > 0 for w in status["workers"]), "both workers got work"

        table = await procs.run("status", f"127.0.0.1:{port}")
        assert table.returncode == 0 and "workers: 2" in table.stdout
        assert all(str(pid) in table.stdout for pid in pids)

        stopped = await procs.run("stop", f"127.0.0.1:{port}")
        assert stopped.returncode == 0, stopped.stderr
        with trio.fail_after(20):
            code = await trio.to_thread.run_sync(dispatcher.wait)
        assert code == 0


async def test_sigkill_worker_mid_run_every_task_completes(tmp_path):
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        first = procs.start_worker(port, "--concurrency", "4", name="w1")
        procs.start_worker(port, "--concurrency", "4", name="w2")
        await _workers_connected(procs, port, 2)
        async with open_client("127.0.0.1", port) as client:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    results = {}

                    async def one(i):
                        results[i] = await client.call("slow_add", i, 1, seconds=0.3)

                    for i in range(60):
                        nursery.start_soon(one, i)
                    await wait_for(lambda: len(_records(tmp_path, "ran")) >= 10)
                    first.send_signal(signal.SIGKILL)
            assert results == {i: i + 1 for i in range(60)}
        status = await _status(procs, port)
        assert status["tasks"]["done"] == 60 and status["tasks"]["lost"] == 0


async def test_dispatcher_restart_on_same_port_workers_return(tmp_path):
    port = free_port()
    with processes(tmp_path) as procs:
        dispatcher, _ = await procs.start_dispatcher("--store", "memory:", port=port, name="d1")
        procs.start_worker(port, name="w")
        await _workers_connected(procs, port, 1)
        async with open_client("127.0.0.1", port) as client:
            assert await client.call("add", 1, 1) == 2
        dispatcher.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await trio.to_thread.run_sync(dispatcher.wait)
        await procs.start_dispatcher("--store", "memory:", port=port, name="d2")
        await _workers_connected(procs, port, 1)
        async with open_client("127.0.0.1", port) as client:
            with trio.fail_after(20):
                assert await client.call("add", 2, 2) == 4


async def test_stop_lets_running_tasks_finish(tmp_path):
    with processes(tmp_path) as procs:
        dispatcher, port = await procs.start_dispatcher("--store", "memory:")
        procs.start_worker(port, "--concurrency", "3")
        await _workers_connected(procs, port, 1)
        async with open_client("127.0.0.1", port) as client:
            handles = [await client.submit("slow_add", [i, 0], {"seconds": 1.0}) for i in range(3)]
            await trio.sleep(0.3)
            stopped = await procs.run("stop", f"127.0.0.1:{port}")
            assert stopped.returncode == 0 and "stopping" in stopped.stdout
            with trio.fail_after(20):
                assert [await h.result() for h in handles] == [0, 1, 2]
        with trio.fail_after(20):
            assert await trio.to_thread.run_sync(dispatcher.wait) == 0


async def _proxy(listen_port_box, target_port, cut_every, nursery_ready):
    """A TCP proxy that forwards to the dispatcher and cuts every connection every ``cut_every`` seconds."""
    connections = []

    async def pump(src, dst):
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(client_stream):
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
        except OSError:
            await client_stream.aclose()
            return
        async with trio.open_nursery() as nursery:
            connections.append((client_stream, upstream, nursery.cancel_scope))
            nursery.start_soon(pump, client_stream, upstream)
            nursery.start_soon(pump, upstream, client_stream)
        await client_stream.aclose()
        await upstream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        listen_port_box.append(listeners[0].socket.getsockname()[1])
        nursery_ready.set()
        while True:
            await trio.sleep(cut_every)
            for _, _, scope in connections:
                scope.cancel()
            connections.clear()


async def test_connections_cut_mid_stream_lose_nothing(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        async with trio.open_nursery() as nursery:
            box, ready = [], trio.Event()
            nursery.start_soon(_proxy, box, port, 0.7, ready)
            await ready.wait()
            procs.start_worker(box[0], "--concurrency", "4")
            procs.start_worker(box[0], "--concurrency", "4")
            await _workers_connected(procs, port, 1)
            async with open_client("127.0.0.1", box[0]) as client:
                with trio.fail_after(90):
                    results = await client.map("slow_add", [(i, 1, 0.05) for i in range(200)])
            assert results == [i + 1 for i in range(200)]
            nursery.cancel_scope.cancel()
