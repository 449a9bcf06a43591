"""Fork detection: a counter bumped in every child process.

A pool records the counter when it opens; if the counter moved, the pool
was opened in a parent process and its sockets belong to that parent.
Comparing two integers costs nothing per call, unlike ``os.getpid()``.
"""

from __future__ import annotations

import os

__all__ = ["generation"]

#: Bumped by ``os.register_at_fork`` in every forked child.
generation = 0


def _after_fork_in_child() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
