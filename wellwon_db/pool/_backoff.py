"""Backoff between attempts at a server that does not answer."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential delays with jitter, capped: ``initial``, x2 each failure, up to ``maximum``.

    Each delay is drawn from the upper half of its step (``[d/2, d]``), so
    workers that lost the same server do not retry in step, and a long
    outage costs one attempt per ``maximum`` seconds or less, never a loop.
    Seconds throughout. :meth:`reset` after a success.
    """

    __slots__ = ("_failures", "_random", "initial", "maximum")

    def __init__(
        self,
        initial: float = 0.05,
        maximum: float = 2.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial=} {maximum=}")
        self.initial = initial
        self.maximum = maximum
        self._failures = 0
        self._random = rng

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        step = min(self.initial * 2.0**self._failures, self.maximum)
        if step < self.maximum:
            self._failures += 1
        return step / 2 + step / 2 * self._random()

    def reset(self) -> None:
        """Start again from ``initial`` (the server answered)."""
        self._failures = 0
