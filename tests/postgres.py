"""A real PostgreSQL server for the tests and the benchmark, started in a temporary directory.

The suite starts its own server rather than using one the machine may run:
``initdb`` a fresh cluster in a temporary directory, ``pg_ctl start`` it on a
free port of 127.0.0.1 with ``trust`` authentication for 127.0.0.1 only, and
stop it by its postmaster's PID when done.  PostgreSQL refuses to run as
root, so as root every server command runs as the ``postgres`` user
(``runuser -u postgres --``), which owns the data and socket directories.

The binaries are ``pg_ctl``'s directory on PATH, else the newest
``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package installs them
there, off PATH).  A server that cannot start raises :class:`PostgresUnavailable`
with its log: the tests that need it fail, loudly; they are never skipped.

Used by ``tests/conftest.py`` (the ``postgres_server`` and ``postgres_url``
fixtures) and by ``benchmarks/run.py`` (its PostgreSQL column).
:func:`journal_rows` reads what a journal holds while a dispatcher writes it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir", "journal_rows", "running_server"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why and what to install."""


def find_bindir() -> str:
    """The directory of PostgreSQL's server binaries (``pg_ctl``, ``initdb``)."""
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return os.path.dirname(os.path.realpath(pg_ctl))

    def version(path: str) -> tuple[int, ...]:
        name = path.split(os.sep)[-3]  # /usr/lib/postgresql/<version>/bin/pg_ctl
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    if not found:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries: pg_ctl is neither on PATH nor in /usr/lib/postgresql/*/bin.  "
            "Install them (Debian: apt-get install postgresql) to run the PostgreSQL tests"
        )
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; :meth:`start`, :meth:`stop`, :meth:`restart`.

    ``database()`` creates a fresh database and returns its
    ``postgresql://postgres@127.0.0.1:PORT/NAME`` URL, so that every test
    gets one of its own.
    """

    def __init__(self, *, synchronous_commit: str = "on") -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else _current_user()
        self.synchronous_commit = synchronous_commit
        self.root = tempfile.mkdtemp(prefix="trioschedule-pg-")
        self.data = os.path.join(self.root, "data")
        self.sockets = os.path.join(self.root, "sockets")
        self.logfile = os.path.join(self.root, "server.log")
        self.port = 0
        self.pid: int | None = None

    # ------------------------------------------------------------ commands
    def _command(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        args = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self.as_root:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False)

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"{what} failed (exit {done.returncode}): {done.stdout}{done.stderr}{self.log_tail()}"
            )

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return "\nserver log:\n" + f.read()[-size:]
        except OSError:
            return ""

    # ------------------------------------------------------------ life cycle
    def init(self) -> None:
        """``initdb`` the cluster, owned by the server's user, listening on 127.0.0.1 only."""
        os.chmod(self.root, 0o755)  # the postgres user must reach its directories inside
        os.makedirs(self.sockets)
        os.makedirs(self.data, mode=0o700)
        if self.as_root:
            for path in (self.root, self.sockets, self.data):
                shutil.chown(path, "postgres", "postgres")
        done = self._command("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                             "--locale=C", "--no-sync")  # fmt: skip  # initdb's own fsyncs only: the cluster is new
        self._check(done, "initdb")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                "\n# trioschedule's test server (tests/postgres.py)\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "fsync = on\n"  # the real thing: commits reach the disk
                f"synchronous_commit = {self.synchronous_commit}\n"
                "log_min_messages = warning\n"
            )
        if self.as_root:
            for name in ("pg_hba.conf", "postgresql.conf"):
                shutil.chown(os.path.join(self.data, name), "postgres", "postgres")

    def start(self) -> None:
        """Start the server (on a new free port the first time, on the same one after a stop)."""
        attempts = 3 if not self.port else 1
        for attempt in range(attempts):
            port = self.port or _free_port()
            done = self._command("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", f"-p {port}",
                                 "-w", "-t", "60", "start")  # fmt: skip
            if done.returncode == 0:
                self.port = port
                self.pid = self._postmaster_pid()
                return
            if attempt == attempts - 1:
                self._check(done, "pg_ctl start")

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``pg_ctl stop -m MODE``), then kill its postmaster by PID if it is still there."""
        pid = self.pid or self._postmaster_pid()
        self._command("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop", timeout=60)
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid = None

    def restart(self, *, down: float = 0.0) -> None:
        """A clean restart (``stop -m fast``, then start on the same port), ``down`` seconds apart."""
        self.stop("fast")
        if down:
            time.sleep(down)
        self.start()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ databases
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=30) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

    def database(self, name: str | None = None) -> str:
        """Create a fresh database and return its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def journal_rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """``sql``'s rows over ``trioschedule_tasks`` as a recovery would see them, changing nothing.

    While a dispatcher runs, the tasks table is as of its last checkpoint and
    ``trioschedule_changes`` holds the commits since.  This applies them the
    way recovery does (the store's own code), runs ``sql``, and rolls back.
    """
    import psycopg

    from trioschedule._json import json_encoder
    from trioschedule._store.changelog import recovered
    from trioschedule._store.generation import Generation
    from trioschedule._store.postgresql.checkpoint import net_statements

    encode = json_encoder()
    with psycopg.connect(url) as conn:
        # One snapshot for the change log and the table (a checkpoint may commit meanwhile);
        # a row such a checkpoint changed since cannot be updated in it: take a new snapshot.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for attempt in range(50):
            try:
                generation = Generation()
                for (text,) in conn.execute("SELECT ops FROM trioschedule_changes ORDER BY seq"):
                    generation.fold(recovered(text), encode)
                for statement, values in net_statements(generation.net(generation.latest, encode)):
                    conn.execute(statement, values)
                return conn.execute(sql, params).fetchall()
            except psycopg.errors.SerializationFailure:
                if attempt == 49:
                    raise
            finally:
                conn.rollback()
    raise AssertionError("unreachable")


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process now
        return True
    # A zombie child of ours counts as gone (pg_ctl daemonises, so it is not ours to reap).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def running_server(**kwargs: str) -> Iterator[PostgresServer]:
    """A started server, stopped (by its postmaster's PID) and removed when the block ends.

    The server outlives a process that dies without running this block's
    ``finally`` (``pg_ctl`` detaches it), so a SIGTERM (``timeout``, CI
    cancelling a job) is turned into SystemExit while the block runs, as the
    benchmark does for its own processes.
    """
    server = PostgresServer(**kwargs)
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            server.remove()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
