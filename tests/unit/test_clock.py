"""Clock offsets: NTP queries (against a local responder), scheduler round trips, tracking."""

from __future__ import annotations

import socket
import time

import pytest

from agent.clock import ClockTracker, best_offset, ntp_samples, scheduler_sample, split_server
from outrider.v1 import common_pb2
from tests.helpers.ntp_responder import NtpResponder

# --------------------------------------------------------------------------------------
# NTP
# --------------------------------------------------------------------------------------


def _closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_ntp_samples_against_responder_offset() -> None:
    with NtpResponder(offset=5.0) as ntp:
        samples = ntp_samples([ntp.address], timeout=2.0)
        assert ntp.requests == 1
    assert len(samples) == 1
    (s,) = samples
    assert s.offset_s == pytest.approx(5.0, abs=0.05)
    assert 0 < s.uncertainty_s < 0.05
    assert s.source == f"ntp:{ntp.address}"
    assert abs(s.measured_at - time.time()) < 5


def test_ntp_samples_default_port_argument() -> None:
    with NtpResponder(offset=-3.25) as ntp:
        samples = ntp_samples([ntp.host], timeout=2.0, port=ntp.port)
    assert len(samples) == 1
    assert samples[0].offset_s == pytest.approx(-3.25, abs=0.05)
    assert samples[0].source == f"ntp:{ntp.host}"


def test_responder_offset_can_change_while_running() -> None:
    with NtpResponder(offset=1.0) as ntp:
        first = ntp_samples([ntp.address], timeout=2.0)
        ntp.offset = -7.0
        second = ntp_samples([ntp.address], timeout=2.0)
    assert first[0].offset_s == pytest.approx(1.0, abs=0.05)
    assert second[0].offset_s == pytest.approx(-7.0, abs=0.05)


def test_ntp_uncertainty_covers_path_delay() -> None:
    """A slow request path skews the offset, but never beyond the reported uncertainty."""
    with NtpResponder(offset=2.0, delay_s=0.2, root_delay=0.0, root_dispersion=0.0) as ntp:
        (s,) = ntp_samples([ntp.address], timeout=2.0)
    assert s.uncertainty_s >= 0.1
    assert abs(s.offset_s - 2.0) <= s.uncertainty_s


def test_ntp_unreachable_server_is_skipped_within_timeout() -> None:
    port = _closed_udp_port()
    with NtpResponder(offset=5.0) as good:
        start = time.monotonic()
        samples = ntp_samples([f"127.0.0.1:{port}", good.address], timeout=0.5)
        elapsed = time.monotonic() - start
    assert [s.source for s in samples] == [f"ntp:{good.address}"]
    assert elapsed < 0.5 + 1.0


def test_ntp_silent_server_times_out() -> None:
    with NtpResponder(silent=True) as ntp:
        start = time.monotonic()
        assert ntp_samples([ntp.address], timeout=0.3) == []
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("kwargs", [{"stratum": 0}, {"leap": 3}, {"stratum": 16}])
def test_ntp_unsynchronized_or_kod_replies_rejected(kwargs: dict[str, int]) -> None:
    with NtpResponder(offset=5.0, **kwargs) as ntp:
        assert ntp_samples([ntp.address], timeout=1.0) == []
        assert ntp.requests == 1  # it did answer; we refused to trust it


def test_ntp_bad_server_strings_skipped() -> None:
    assert ntp_samples([], timeout=0.1) == []
    assert ntp_samples(["", "   ", "127.0.0.1:notaport", "127.0.0.1:70000"], timeout=0.1) == []


def test_split_server() -> None:
    split = split_server
    assert split("pool.ntp.org", 123) == ("pool.ntp.org", 123)
    assert split("10.0.0.1:1123", 123) == ("10.0.0.1", 1123)
    assert split("::1", 123) == ("::1", 123)
    assert split("[::1]:4123", 123) == ("::1", 4123)
    assert split("[fe80::1]", 123) == ("fe80::1", 123)
    with pytest.raises(ValueError):
        split(":123", 123)


def test_responder_ignores_non_client_packets() -> None:
    with NtpResponder() as ntp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        # mode 4 (server) and a v2 client packet: both ignored.
        for first_byte in (0x24, 0x13):
            s.sendto(bytes([first_byte]) + bytes(47), (ntp.host, ntp.port))
            with pytest.raises(socket.timeout):
                s.recvfrom(128)
        s.sendto(b"\x23" + bytes(20), (ntp.host, ntp.port))  # short packet
        with pytest.raises(socket.timeout):
            s.recvfrom(128)
        # A well-formed v4 client packet is answered, echoing its transmit timestamp.
        request = b"\x23" + bytes(39) + b"ABCDEFGH"
        s.sendto(request, (ntp.host, ntp.port))
        reply, _ = s.recvfrom(128)
    assert len(reply) == 48
    assert reply[0] & 0x7 == 4
    assert (reply[0] >> 3) & 0x7 == 4
    assert reply[24:32] == b"ABCDEFGH"


def test_responder_stop_closes_and_joins() -> None:
    ntp = NtpResponder().start()
    thread = ntp._thread
    ntp.stop()
    ntp.stop()  # idempotent
    assert thread is not None and not thread.is_alive()
    assert ntp._sock.fileno() == -1
    with pytest.raises(RuntimeError):
        ntp.start()


# --------------------------------------------------------------------------------------
# Scheduler samples and tracking
# --------------------------------------------------------------------------------------


def test_scheduler_sample_math() -> None:
    s = scheduler_sample(t_send=100.0, server_time=110.5, t_recv=100.2)
    assert s.source == "scheduler"
    assert s.offset_s == pytest.approx(110.5 - 100.1)
    assert s.uncertainty_s == pytest.approx(0.1)
    assert s.measured_at == pytest.approx(100.2)
    # A local clock step during the call must not give a negative uncertainty.
    assert scheduler_sample(100.0, 100.0, 99.8).uncertainty_s == pytest.approx(0.1)


def test_best_offset_picks_min_uncertainty() -> None:
    a = common_pb2.ClockSample(offset_s=1.0, uncertainty_s=0.02, source="ntp:a", measured_at=10)
    b = common_pb2.ClockSample(offset_s=1.1, uncertainty_s=0.005, source="scheduler", measured_at=10)
    c = common_pb2.ClockSample(offset_s=0.9, uncertainty_s=0.005, source="ntp:c", measured_at=11)
    assert best_offset([]) is None
    assert best_offset([a]) is a
    assert best_offset([a, b]) is b
    assert best_offset([a, b, c]) is c  # tie: the more recent one


def test_clock_tracker_keeps_min_uncertainty_scheduler_sample() -> None:
    t = ClockTracker(window=4, drift_rate=0.0)
    assert t.samples() == []
    assert t.best() is None
    # Round trips of 40, 4, 100 ms, all seeing the same true offset of +2 s.
    t.observe_scheduler(1000.00, 1002.02, 1000.04)
    t.observe_scheduler(1001.00, 1003.002, 1001.004)
    t.observe_scheduler(1002.00, 1004.05, 1002.10)
    best = t.scheduler_offset(now=1003.0)
    assert best is not None
    assert best.uncertainty_s == pytest.approx(0.002)
    assert best.offset_s == pytest.approx(2.0)
    assert best.measured_at == pytest.approx(1001.004)
    # The window is 4: after four worse round trips the precise one falls out.
    for i in range(4):
        t.observe_scheduler(1010.0 + i, 1012.0 + i + 0.01, 1010.0 + i + 0.02)
    best = t.scheduler_offset(now=1020.0)
    assert best is not None and best.uncertainty_s == pytest.approx(0.01)
    assert [s.source for s in t.samples(now=1020.0)] == ["scheduler"]


def test_clock_tracker_ages_old_samples() -> None:
    t = ClockTracker(window=8, drift_rate=1e-3)
    t.observe_scheduler(1000.0, 1002.001, 1000.002)  # u=1 ms, measured at 1000.002
    t.observe_scheduler(1100.0, 1102.005, 1100.010)  # u=5 ms, measured 100 s later
    best = t.scheduler_offset(now=1100.010)
    # The old one has aged by 0.1 s * 1e-3... = 100 ms: the fresh 5 ms one wins.
    assert best is not None
    assert best.measured_at == pytest.approx(1100.010)
    assert best.uncertainty_s == pytest.approx(0.005)


def test_clock_tracker_drops_samples_after_a_clock_step() -> None:
    t = ClockTracker(window=8, drift_rate=0.0)
    t.observe_scheduler(1000.0, 1002.0005, 1000.001)  # offset +2 s, u=0.5 ms
    # The local clock was stepped by 2 s: offset now ~0; a worse RTT, but it is the truth.
    t.observe_scheduler(1003.0, 1003.01, 1003.02)
    best = t.scheduler_offset(now=1003.02)
    assert best is not None
    assert best.offset_s == pytest.approx(0.0, abs=0.011)


def test_clock_tracker_with_ntp_responder() -> None:
    with NtpResponder(offset=5.0) as a, NtpResponder(offset=5.0, root_dispersion=0.5) as b:
        t = ClockTracker([a.address, b.address, f"127.0.0.1:{_closed_udp_port()}"], ntp_timeout=0.5)
        fresh = t.update_ntp()
    assert {s.source for s in fresh} == {f"ntp:{a.address}", f"ntp:{b.address}"}
    t.observe_scheduler(time.time() - 0.2, time.time() + 5.0, time.time())
    samples = t.samples()
    assert len(samples) == 3
    assert sorted(s.source for s in samples) == sorted(
        [f"ntp:{a.address}", f"ntp:{b.address}", "scheduler"]
    )
    best = t.best()
    assert best is not None and best.source == f"ntp:{a.address}"
    assert best.offset_s == pytest.approx(5.0, abs=0.05)
    # Samples are copies: mutating them does not change the tracker.
    samples[0].offset_s = 1e9
    assert all(s.offset_s < 1e6 for s in t.samples())


def test_clock_tracker_expires_old_ntp_samples() -> None:
    with NtpResponder(offset=1.0) as ntp:
        t = ClockTracker([ntp.address], max_age_s=60.0)
        t.update_ntp()
    assert len(t.samples()) == 1
    assert t.samples(now=time.time() + 3600) == []


def test_clock_tracker_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClockTracker(window=0)
