"""A clock a test moves by hand, for driving the engine's ``tick(now)`` without sleeping."""
from __future__ import annotations


class FakeClock:
    """Callable like ``time.monotonic``/``time.time``; returns ``t``, which the test sets."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
