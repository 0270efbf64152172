"""The command line: ``python -m trioschedule`` and the ``trioschedule`` console script.

``main(argv)`` only parses arguments into a dispatcher, workers or a client
and runs them; everything it does is available from Python too.  Scripts in
the style of Workerman's ``php dispatcher.php start`` call it with their own
argument list (see examples/dispatcher.py).

Exit codes: 0 success, 1 the task failed (``submit --wait``, ``result``), was
rejected, or is unknown, 2 usage or configuration error, 3 cannot reach or
authenticate with the dispatcher, 4 the task has not finished yet (``result``
without ``--wait``).

The package is laid out by responsibility: ``_parser`` (options and their
defaults), ``_commands`` (what each command builds and runs), ``_supervisor``
(``worker --processes N``), ``_format`` (the status table), ``_loading``
(``MODULE:CLASS``), ``_logs`` (``--log-format``) and ``_script`` (``python
x.py start|stop|restart|reload|status``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from .._errors import AuthenticationError, ConnectionClosed, LocalProtocolError, ProtocolError, Rejected, TriosError
from .._util import single_error
from ._commands import COMMANDS, UsageError
from ._format import format_status as format_status
from ._logs import configure_logging
from ._parser import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._parser import DEFAULT_STORE as DEFAULT_STORE
from ._parser import build_parser
from ._script import run_script as run_script

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_STORE", "format_status", "main", "run_script"]

# What went wrong -> (message prefix, exit code); the first matching row wins.
_FAILURES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, int], ...] = (
    (UsageError, "error: ", 2),
    (LocalProtocolError, "error: ", 2),  # something of ours cannot be sent (not JSON, too large)
    ((ValueError, OSError), "error: ", 2),
    (AuthenticationError, "authentication failed: ", 3),
    ((ConnectionClosed, ProtocolError), "", 3),
    (Rejected, "rejected: ", 1),
    (TriosError, "error: ", 2),  # a refused journal, and the like
)


def main(argv: Sequence[str] | None = None, *, script: str | None = None) -> int:
    """Run one ``trioschedule`` command (``argv`` defaults to ``sys.argv[1:]``); return its exit code.

    ``script`` names the command in usage and errors instead of
    ``trioschedule COMMAND`` (:func:`run_script` passes ``python x.py start``).
    """
    args = build_parser(script=script).parse_args(argv)
    # Read the shared secret once, and keep it out of the environment that
    # tasks' child processes would inherit.
    env_token = os.environ.pop("TRIOSCHEDULE_TOKEN", None)
    args.token = getattr(args, "token", None) or env_token or None  # conformance has no --token
    configure_logging(args.log_level, args.log_format)
    try:
        try:
            return int(COMMANDS[args.command](args))
        except BaseExceptionGroup as group:  # one failure inside a nursery: report it, not the group
            raise (single_error(group) or group) from None
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        for kinds, prefix, code in _FAILURES:
            if isinstance(exc, kinds):
                if isinstance(exc, Rejected):
                    prefix = f"rejected ({exc.code}): "
                print(f"trioschedule: {prefix}{_message(exc, args)}", file=sys.stderr)
                return code
        if args.log_format == "json":  # a crash is one JSON line too, with its traceback in "exception"
            logging.getLogger("trioschedule").critical("%s crashed: %r", args.command, exc, exc_info=True)
            return 1
        raise


def _message(exc: BaseException, args: argparse.Namespace) -> str:
    """The error's text, with the command-line spelling of what to do next."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        flag = "--http" if str(exc.strerror).startswith("cannot serve http") else "--listen"
        return f"{exc.strerror}; choose another address with {flag} HOST:PORT (port 0 picks a free one)"
    text = str(exc).replace("pass token= or set TRIOSCHEDULE_TOKEN", "pass --token or set TRIOSCHEDULE_TOKEN")
    plaintext = getattr(args, "tls_ca", "given") is None and not getattr(args, "tls_cert", None)
    if isinstance(exc, ConnectionClosed) and plaintext and ("closed the connection" in text or "reset" in text):
        # A TLS dispatcher drops a plaintext hello without a word.
        text += " (if the dispatcher serves TLS, pass --tls-ca FILE)"
    return text
