"""The worker: connects to a dispatcher, runs the tasks it declares, reports every outcome.

``worker.py`` is the worker's life (public API, hooks, connecting, resuming,
draining); ``runner.py`` its base class, which runs tasks and reports them
(the hot path); ``readturn.py`` lets an idle runner read the connection
itself.
"""

from .worker import Worker as Worker

__all__ = ["Worker"]
