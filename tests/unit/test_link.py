"""The agent's link meter: smoothed throughput and round-trip time to the scheduler."""

from __future__ import annotations

import pytest

from agent.link import MIN_TRANSFER_BYTES, LinkMeter, TransferTimer

MiB = 1 << 20


def test_first_transfer_is_taken_as_is_then_ewma() -> None:
    m = LinkMeter(alpha=0.3, full_weight_bytes=MiB)
    assert (m.bandwidth_bps, m.rtt_s) == (0.0, 0.0)
    assert m.observe_transfer(10 * MiB, 1.0)
    assert m.bandwidth_bps == pytest.approx(10 * MiB)
    assert m.observe_transfer(2 * MiB, 1.0)  # full weight: bw += 0.3 * (2 MiB/s - 10 MiB/s)
    assert m.bandwidth_bps == pytest.approx(10 * MiB + 0.3 * (2 * MiB - 10 * MiB))
    expected = m.bandwidth_bps
    for _ in range(20):  # converges to a steady new rate
        m.observe_transfer(4 * MiB, 2.0)
        expected += 0.3 * (2 * MiB - expected)
    assert m.bandwidth_bps == pytest.approx(expected)
    assert m.bandwidth_bps == pytest.approx(2 * MiB, rel=0.01)
    assert m.transfers == 22


def test_small_transfers_weigh_less() -> None:
    m = LinkMeter(alpha=0.3, full_weight_bytes=MiB)
    m.observe_transfer(8 * MiB, 1.0)  # 8 MiB/s
    m.observe_transfer(256 * 1024, 1.0)  # a quarter of full weight: 0.075
    assert m.bandwidth_bps == pytest.approx(8 * MiB + 0.075 * (256 * 1024 - 8 * MiB))


def test_tiny_and_nonsense_transfers_are_ignored() -> None:
    m = LinkMeter()
    assert not m.observe_transfer(MIN_TRANSFER_BYTES - 1, 0.001)
    assert not m.observe_transfer(MiB, 0.0)
    assert not m.observe_transfer(MiB, -1.0)
    assert not m.observe_transfer(MiB, float("nan"))
    assert not m.observe_transfer(MiB, float("inf"))
    assert (m.bandwidth_bps, m.transfers) == (0.0, 0)
    assert m.observe_transfer(MIN_TRANSFER_BYTES, 0.5)
    assert m.bandwidth_bps == pytest.approx(MIN_TRANSFER_BYTES / 0.5)


def test_rtt_is_the_min_over_a_sliding_window() -> None:
    m = LinkMeter(rtt_window=3)
    for rtt in (0.050, 0.020, 0.200):  # a queueing spike does not show
        assert m.observe_rtt(rtt)
    assert m.rtt_s == pytest.approx(0.020)
    m.observe_rtt(0.090)
    m.observe_rtt(0.080)  # the 20 ms sample has left the window: the path got longer
    assert m.rtt_s == pytest.approx(0.080)
    # Clock steps between send and reply are not round trips.
    assert not m.observe_rtt(-0.5)
    assert not m.observe_rtt(1e6)
    assert not m.observe_rtt(float("nan"))
    assert m.rtt_s == pytest.approx(0.080)


def test_meter_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LinkMeter(alpha=0)
    with pytest.raises(ValueError):
        LinkMeter(rtt_window=0)


def test_transfer_timer_leaves_out_the_first_chunk_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.link as link

    clock = iter([100.0, 100.5, 100.6, 100.7, 100.8])  # start, then four chunks
    monkeypatch.setattr(link.time, "monotonic", lambda: next(clock))
    t = TransferTimer()
    for _ in range(4):
        t.chunk(MiB)
    assert t.first_byte_s == pytest.approx(0.5)
    nbytes, seconds = t.result()
    assert nbytes == 3 * MiB and seconds == pytest.approx(0.3)


def test_transfer_timer_single_chunk_uses_the_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.link as link

    clock = iter([10.0, 10.25])
    monkeypatch.setattr(link.time, "monotonic", lambda: next(clock))
    t = TransferTimer()
    t.chunk(512 * 1024)
    assert t.result() == (512 * 1024, pytest.approx(0.25))
