"""``python -m trioschedule``: the command line, see :mod:`trioschedule.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
