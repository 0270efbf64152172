"""The scheduling core: every decision about tasks, and no I/O.

It never imports trio.  The dispatcher's trio shell feeds it what happened
(a submission, a worker's results, a lost connection, the time) and carries
out what it leaves behind: Run frames and control messages queued on worker
sessions, outcomes queued for clients, journal operations, timers.  See
docs/ARCHITECTURE.md for how a task flows through it.
"""
