"""The backoff every resuming stream of the client shares (outrider.reconnect)."""
from __future__ import annotations

import pytest

from outrider import reconnect
from outrider.client import ConnectionFailed, _unavailable
from outrider.errors import NotFound


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake monotonic clock that sleeping advances; the list holds each sleep."""
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    monkeypatch.setattr(reconnect.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(reconnect.time, "sleep", sleep)
    monkeypatch.setattr(reconnect.random, "uniform", lambda a, b: 1.0)
    return slept


def test_unavailable_is_retried_with_a_doubling_capped_backoff_until_the_deadline(clock: list[float]) -> None:
    seen: list[int] = []
    r = reconnect.Reconnects(20.0, lambda tries, exc: seen.append(tries), _unavailable)
    down = ConnectionFailed("scheduler away", "UNAVAILABLE")
    with pytest.raises(ConnectionFailed):
        while True:
            r.lost(down)
    assert clock[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0] and max(clock) == 5.0
    assert sum(clock) == pytest.approx(20.0)  # the last wait is cut to the deadline
    assert seen == list(range(1, len(clock) + 1))


def test_a_delivery_starts_afresh_and_other_errors_are_not_retried(clock: list[float]) -> None:
    r = reconnect.Reconnects(20.0, None, _unavailable)
    down = ConnectionFailed("scheduler away", "UNAVAILABLE")
    r.lost(down)
    r.lost(down)
    r.connected()
    r.lost(down)
    assert clock == [0.2, 0.4, 0.2]
    with pytest.raises(NotFound):
        r.lost(NotFound("no such run"))
    with pytest.raises(ConnectionFailed):
        r.lost(ConnectionFailed("bad certificate", "UNAUTHENTICATED"))
    assert len(clock) == 3
