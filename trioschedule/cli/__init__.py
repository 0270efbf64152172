"""The command line: ``python -m trioschedule`` and the ``trioschedule`` console script.

``main(argv)`` only parses arguments into a dispatcher, workers or a client
and runs them; everything it does is available from Python too.  Scripts in
the style of Workerman's ``php dispatcher.php start`` call it with their own
argument list (see examples/dispatcher.py).

Exit codes: 0 success, 1 the task failed (``submit --wait``) or was rejected,
2 usage or configuration error, 3 cannot reach or authenticate with the
dispatcher.

The package is laid out by responsibility: ``_parser`` (options and their
defaults), ``_commands`` (what each command builds and runs), ``_supervisor``
(``worker --processes N``), ``_format`` (the status table) and ``_loading``
(``MODULE:CLASS``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .._errors import AuthenticationError, ConnectionClosed, ProtocolError, Rejected, TriosError
from .._util import single_error
from ._commands import COMMANDS, UsageError
from ._format import format_status as format_status
from ._parser import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._parser import DEFAULT_STORE as DEFAULT_STORE
from ._parser import build_parser

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_STORE", "format_status", "main"]

# What went wrong -> (message prefix, exit code); the first matching row wins.
_FAILURES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, int], ...] = (
    (UsageError, "error: ", 2),
    ((ValueError, OSError), "error: ", 2),
    (AuthenticationError, "authentication failed: ", 3),
    ((ConnectionClosed, ProtocolError), "", 3),
    (Rejected, "rejected: ", 1),
    (TriosError, "error: ", 2),  # a refused journal, and the like
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``trioschedule`` command (``argv`` defaults to ``sys.argv[1:]``); return its exit code."""
    args = build_parser().parse_args(argv)
    # Read the shared secret once, and keep it out of the environment that
    # tasks' child processes would inherit.
    env_token = os.environ.pop("TRIOSCHEDULE_TOKEN", None)
    args.token = getattr(args, "token", None) or env_token or None
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
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
                print(f"trioschedule: {prefix}{exc}", file=sys.stderr)
                return code
        raise
