"""How many worker processes share a connection budget, when no setting says.

``WEB_CONCURRENCY`` (uvicorn's and gunicorn's variable) is read by those
servers but not set by them: ``uvicorn --workers 4`` leaves it unset in its
workers. So, failing the settings, the count is read from the parent
process's command line when the parent is a known multi-process server
(``uvicorn``, ``gunicorn``, ``hypercorn``) started with ``--workers N`` /
``-w N``. When the parent is such a server and its count cannot be read (a
configuration file, a process title), the caller warns: a budget cannot be
divided by an unknown number.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wellwon_db.errors import ConfigurationError

__all__ = ["WorkerCount", "parse_worker_option", "worker_count"]

#: Servers whose ``--workers`` children we may be.
_SERVERS: Final = ("uvicorn", "gunicorn", "hypercorn")
_INLINE: Final = re.compile(r"^(?:--workers=|-w)(\d+)$")


@dataclass(frozen=True, slots=True)
class WorkerCount:
    """``count`` workers, and where that number came from.

    ``source`` is ``"WEB_CONCURRENCY"``, ``"<server> --workers"`` (read from the
    parent's command line) or ``"assumed"``; ``server`` names the parent
    server when it is one whose worker count could not be read.
    """

    count: int
    source: str
    server: str | None = None


def worker_count(parent_cmdline: list[str] | None = None) -> WorkerCount:
    """The number of workers per ``WEB_CONCURRENCY``, else the parent's ``--workers``, else 1.

    ``parent_cmdline`` defaults to the parent process's arguments (Linux
    ``/proc``; elsewhere none). Raises :class:`ConfigurationError` for a
    ``WEB_CONCURRENCY`` that is not a positive integer.
    """
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if raw:
        try:
            workers = int(raw)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigurationError(
                f"WEB_CONCURRENCY={raw!r} is not a positive number of workers; fix it or set "
                "PG_[<DB>_]POOL_WORKERS",
                env_var="WEB_CONCURRENCY",
            )
        return WorkerCount(workers, "WEB_CONCURRENCY")
    argv = _parent_cmdline() if parent_cmdline is None else parent_cmdline
    server = _server_of(argv)
    if server is None:
        return WorkerCount(1, "assumed")
    option = parse_worker_option(argv)
    if option is None:
        return WorkerCount(1, "assumed", server=server)
    return WorkerCount(option, f"{server} --workers")


def parse_worker_option(argv: list[str]) -> int | None:
    """The value of ``--workers N``, ``--workers=N``, ``-w N`` or ``-wN`` in ``argv``."""
    for index, argument in enumerate(argv):
        inline = _INLINE.match(argument)
        if inline:
            return max(1, int(inline.group(1)))
        if argument in ("--workers", "-w") and index + 1 < len(argv):
            value = argv[index + 1]
            if value.isdigit():
                return max(1, int(value))
    return None


def _server_of(argv: list[str]) -> str | None:
    """The known server ``argv`` runs (``uvicorn ...``, ``python -m uvicorn ...``), if any."""
    for argument in argv[:3]:
        name = Path(argument).name
        for server in _SERVERS:
            if name == server or name.startswith(f"{server}:"):
                return server
    return None


def _parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
