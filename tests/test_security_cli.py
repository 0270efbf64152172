"""Tokens and TLS through the command line: real processes, as an operator runs them.

Exit code 3 means "cannot reach or authenticate with the dispatcher"; every
refusal must say so in one line (no traceback) and leave the dispatcher up.
"""

from __future__ import annotations

import json
import os
import subprocess
import types

import trio

from .processes import cli, processes, wait_for
from .test_security import make_pki

TOKEN = "cli-token-0123456789"


async def run_cli(procs, *args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess[str]:
    """Like ``procs.run`` but with extra environment variables for this one command."""
    with trio.fail_after(timeout):
        done = await trio.run_process(cli(*args), env={**procs.env, **env}, cwd=procs.tmp_path,
                                      capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def tls_client_args(pki: types.SimpleNamespace) -> list[str]:
    return ["--tls-ca", pki.ca]


async def start_secure_dispatcher(procs, pki, *extra: str):
    return await procs.start_dispatcher(
        "--store", "memory:", "--token", TOKEN, "--tls-cert", pki.server_cert, "--tls-key", pki.server_key, *extra
    )


async def connected_workers(procs, address: str, *creds: str, count: int = 1):
    async def check():
        result = await run_cli(procs, "status", address, "--json", *creds)
        if result.returncode != 0:
            return None
        workers = [w for w in json.loads(result.stdout)["workers"] if w["connected"]]
        return workers if len(workers) >= count else None

    return await wait_for(check, timeout=20, interval=0.2)


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 3 and one clear line on stderr, never a traceback."""
    assert result.returncode == 3, (result.args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("trioschedule:"), result.stderr
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


async def test_cli_token_and_tls(tmp_path):
    pki = make_pki(str(tmp_path))
    # TRIOSCHEDULE_TOKEN="" so that nothing inherits a token from the developer's shell.
    with processes(tmp_path, TRIOSCHEDULE_TOKEN="") as procs:
        dispatcher, port = await start_secure_dispatcher(procs, pki)
        address = f"127.0.0.1:{port}"
        procs.start_worker(port, "--token", TOKEN, *tls_client_args(pki))
        [worker] = await connected_workers(procs, address, "--token", TOKEN, *tls_client_args(pki))

        # The right credentials, by flag and by environment variable.
        by_flag = await run_cli(procs, "submit", address, "add", "2", "3", "--wait", "--token", TOKEN,
                                *tls_client_args(pki))  # fmt: skip
        assert (by_flag.returncode, by_flag.stdout.strip()) == (0, "5"), by_flag.stderr
        by_env = await run_cli(procs, "submit", address, "add", "4", "5", "--wait", *tls_client_args(pki),
                               TRIOSCHEDULE_TOKEN=TOKEN)  # fmt: skip
        assert (by_env.returncode, by_env.stdout.strip()) == (0, "9"), by_env.stderr
        status = await run_cli(procs, "status", address, "--json", *tls_client_args(pki), TRIOSCHEDULE_TOKEN=TOKEN)
        assert status.returncode == 0, status.stderr
        assert [w["pid"] for w in json.loads(status.stdout)["workers"]] == [worker["pid"]]

        # The wrong credentials, all at once: each one is refused with exit code 3.
        ca = tls_client_args(pki)
        attempts = {
            "submit, wrong token": (["submit", address, "add", "1", "1", "--wait", "--token", "wrong", *ca], {}, "authentication failed"),
            "submit, wrong env token": (["submit", address, "add", "1", "1", "--wait", *ca], {"TRIOSCHEDULE_TOKEN": "wrong"}, "authentication failed"),
            "submit, no token": (["submit", address, "add", "1", "1", "--wait", *ca], {}, ("requires a token", "pass --token")),
            "submit, no --tls-ca": (["submit", address, "add", "1", "1", "--wait", "--token", TOKEN], {}, (address, "pass --tls-ca")),
            "submit, another CA": (["submit", address, "add", "1", "1", "--token", TOKEN, "--tls-ca", pki.other_ca], {}, "certificate"),
            "status, wrong token": (["status", address, "--token", "wrong", *ca], {}, "authentication failed"),
            "status, no token": (["status", address, *ca], {}, "requires a token"),
            "status, no --tls-ca": (["status", address], {"TRIOSCHEDULE_TOKEN": TOKEN}, (address, "pass --tls-ca")),
            "stop, wrong token": (["stop", address, "--token", "wrong", *ca], {}, "authentication failed"),
            "stop, no token": (["stop", address, *ca], {}, "requires a token"),
            "stop, no --tls-ca": (["stop", address, "--token", TOKEN], {}, (address, "pass --tls-ca")),
        }  # fmt: skip
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        async def attempt(name: str) -> None:
            args, env, _ = attempts[name]
            results[name] = await run_cli(procs, *args, **env)

        async with trio.open_nursery() as nursery:
            for name in attempts:
                nursery.start_soon(attempt, name)
        failures = []
        for name, (_, _, needle) in attempts.items():
            try:
                refused(results[name], *(needle if isinstance(needle, tuple) else (needle,)))
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")

        # The dispatcher is unaffected: still up, still serving, nothing was submitted or stopped.
        assert dispatcher.poll() is None
        again = await run_cli(procs, "submit", address, "add", "20", "22", "--wait", *ca, TRIOSCHEDULE_TOKEN=TOKEN)
        assert (again.returncode, again.stdout.strip()) == (0, "42"), again.stderr
        status = await run_cli(procs, "status", address, "--json", *ca, TRIOSCHEDULE_TOKEN=TOKEN)
        snapshot = json.loads(status.stdout)
        assert snapshot["tasks"]["done"] == 3 and not snapshot["draining"]
        log = procs.log("dispatcher")
        assert "127.0.0.1:" in log and "closed: authentication failed" in log
        assert TOKEN not in log

        stopped = await run_cli(procs, "stop", address, *ca, TRIOSCHEDULE_TOKEN=TOKEN)
        assert stopped.returncode == 0, stopped.stderr
        with trio.fail_after(15):
            assert await trio.to_thread.run_sync(dispatcher.wait) == 0
        assert not failures, "\n".join(failures)


async def test_cli_worker_with_a_wrong_token_exits_with_code_3(tmp_path):
    pki = make_pki(str(tmp_path))
    with processes(tmp_path, TRIOSCHEDULE_TOKEN="") as procs:
        dispatcher, port = await start_secure_dispatcher(procs, pki)
        intruder = procs.start_worker(port, "--token", "wrong", *tls_client_args(pki), name="intruder")
        with trio.fail_after(15):
            code = await trio.to_thread.run_sync(intruder.wait)
        log = procs.log("intruder")
        assert code == 3, log
        assert "Traceback" not in log and "authentication failed" in log, log
        assert dispatcher.poll() is None
        status = await run_cli(procs, "status", f"127.0.0.1:{port}", "--json", *tls_client_args(pki),
                               TRIOSCHEDULE_TOKEN=TOKEN)  # fmt: skip
        assert status.returncode == 0 and json.loads(status.stdout)["workers"] == []


async def test_cli_mutual_tls(tmp_path):
    pki = make_pki(str(tmp_path))
    with processes(tmp_path, TRIOSCHEDULE_TOKEN=TOKEN) as procs:  # the token from the environment, everywhere
        dispatcher, port = await procs.start_dispatcher(
            "--store", "memory:", "--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-client-ca", pki.ca
        )
        address = f"127.0.0.1:{port}"
        mutual = ["--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
        procs.start_worker(port, *mutual)
        await connected_workers(procs, address, *mutual)
        result = await run_cli(procs, "submit", address, "add", "1", "2", "--wait", *mutual)
        assert (result.returncode, result.stdout.strip()) == (0, "3"), result.stderr
        async with trio.open_nursery() as nursery:
            results: dict[str, subprocess.CompletedProcess[str]] = {}

            async def attempt(name: str, *args: str) -> None:
                results[name] = await run_cli(procs, *args)

            nursery.start_soon(attempt, "no client certificate", "status", address, "--tls-ca", pki.ca)
            nursery.start_soon(attempt, "certificate from another CA", "status", address, "--tls-ca", pki.ca,
                               "--tls-cert", pki.stranger_cert, "--tls-key", pki.stranger_key)  # fmt: skip
        for name, result in results.items():
            assert result.returncode == 3, (name, result.stderr)
            assert "Traceback" not in result.stderr, (name, result.stderr)
        assert dispatcher.poll() is None
        assert (await run_cli(procs, "stop", address, *mutual)).returncode == 0
        with trio.fail_after(15):
            assert await trio.to_thread.run_sync(dispatcher.wait) == 0
        assert not os.path.exists(os.path.join(tmp_path, "trioschedule.sqlite3"))
