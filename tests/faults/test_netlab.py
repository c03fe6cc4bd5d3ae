"""The emulator tested by itself: what is asked of a link is what a packet gets, within 20 %.

Measured inside the namespaces with ``probe.py``: numbered, timestamped UDP datagrams
(one-way delay is exact here: every namespace shares this machine's clock), UDP round
trips, and a TCP transfer for rate. Each test prints asked vs measured. The delay-type
tests run on the TUN forwarder always and on ``netem`` where the kernel has it. The
figures are listed at the end of the session (the ``measured`` fixture).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults import netlab
from tests.faults.netlab import Impairment, NetLab

Measured = Callable[[str, str, str], None]  # the `measured` fixture: what, asked, measured

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PORT = 9000


def within(measured: float, asked: float, tol: float = 0.20) -> bool:
    return abs(measured - asked) <= tol * asked


def one_way(lab: NetLab, src: str, dst: str, count: int, interval: float, idle: float = 2.0) -> dict[str, Any]:
    """Blast ``count`` datagrams from ``src`` to ``dst``; what the sink saw."""
    sink = lab.probe_server(dst, "udp-sink", "--bind", f"{lab.ip(dst)}:{PORT}", "--idle", str(idle))
    try:
        lab.probe(src, "udp-blast", "--to", f"{lab.ip(dst)}:{PORT}", "--count", str(count), "--interval", str(interval))
        return NetLab.collect(sink, timeout=count * interval + idle + 30)
    finally:
        sink.kill()


def rtts(lab: NetLab, src: str, dst: str, count: int, interval: float, timeout: float = 3.0) -> dict[str, Any]:
    echo = lab.probe_server(dst, "udp-echo", "--bind", f"{lab.ip(dst)}:{PORT + 1}")
    try:
        return lab.probe(
            src,
            "udp-ping",
            "--to",
            f"{lab.ip(dst)}:{PORT + 1}",
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--timeout",
            str(timeout),
        )
    finally:
        echo.kill()


@pytest.fixture(params=["tun", "netem"])
def emulator(request: pytest.FixtureRequest, lab_support: None) -> str:
    if request.param == "netem" and not netlab.netem_available():
        pytest.skip("this kernel has no netem qdisc (the TUN forwarder stands in for it)")
    if request.param == "tun" and not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun for the user-space link emulator")
    return str(request.param)


# --------------------------------------------------------------------------- layout and cleanup


def test_hosts_reach_each_other_and_everything_goes_with_the_lab(make_lab: Callable[..., NetLab]) -> None:
    root_links = netlab.sh(["ip", "-o", "link"]).count("\n")
    root_rules = netlab.sh(["nft", "list", "ruleset"])
    lab = make_lab(["a", "b", "c"], emulator="tun")
    for src, dst in (("a", "b"), ("b", "c"), ("c", "a")):
        got = rtts(lab, src, dst, count=5, interval=0.01)
        assert got["received"] == 5, (src, dst, got)
    # An emulated link and then a clean one again: the forwarder, its TUN devices and its
    # rules are gone as soon as the link is clean.
    lab.impair("b", Impairment(delay_ms=5))
    router_links = netlab.sh(["ip", "-n", lab.router_ns, "-o", "link"])
    assert "th-b" in router_links and "tc-b" in router_links
    lab.clear("b")
    router_links = netlab.sh(["ip", "-n", lab.router_ns, "-o", "link"])
    assert "th-b" not in router_links and "tc-b" not in router_links
    assert "lookup 1002" not in netlab.sh(["ip", "-n", lab.router_ns, "rule"])
    lab.impair("c", Impairment(delay_ms=5, rate_kbit=512, loss_pct=1))
    sleeper = lab.spawn("a", ["sleep", "600"])
    frozen = lab.spawn("b", ["sleep", "600"])
    frozen.freeze()  # a stopped process must not keep a namespace alive either
    lab.close()
    assert not [ns for ns in netlab.netns_list() if ns.startswith(lab.prefix)]
    assert not sleeper.alive() and not frozen.alive()
    assert netlab.sh(["ip", "-o", "link"]).count("\n") == root_links
    assert netlab.sh(["nft", "list", "ruleset"]) == root_rules


def test_the_sweeper_removes_what_a_dead_run_left(lab_support: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the "crashed run" that owned the namespace
    ns = f"{netlab.PREFIX_ROOT}{dead.pid}x1-router"
    netlab.sh(["ip", "netns", "add", ns])
    try:
        netlab.sh(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        orphan = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while orphan.pid not in netlab.netns_pids(ns):  # `ip netns exec` has entered and exec'd
            assert time.monotonic() < deadline and orphan.poll() is None
            time.sleep(0.02)
        mine = f"{netlab.PREFIX_ROOT}{os.getpid()}x999-router"  # a live run's namespace is left alone
        netlab.sh(["ip", "netns", "add", mine])
        try:
            assert ns in netlab.sweep()
            assert ns not in netlab.netns_list() and mine in netlab.netns_list()
            assert orphan.wait(5) == -9
        finally:
            netlab.kill_netns(mine)
    finally:
        netlab.kill_netns(ns)


# --------------------------------------------------------------------------- delay, jitter


def test_delay_and_jitter(make_lab: Callable[..., NetLab], emulator: str, measured: Measured) -> None:
    lab = make_lab(["a", "edge"], emulator=emulator)
    lab.impair("edge", Impairment(delay_ms=100))
    got = one_way(lab, "a", "edge", count=200, interval=0.005)
    mean = statistics.mean(got["one_way_ms"])
    measured(f"{emulator} delay (one way)", "100ms", f"{mean:.1f}ms over {got['unique']} datagrams")
    assert got["unique"] == 200 and within(mean, 100)
    rt = rtts(lab, "a", "edge", count=50, interval=0.01)
    rtt = statistics.mean(rt["rtts_ms"])
    measured(f"{emulator} delay (round trip)", "200ms", f"{rtt:.1f}ms")
    assert within(rtt, 200)

    lab.impair("edge", Impairment(delay_ms=100, jitter_ms=40))
    got = one_way(lab, "a", "edge", count=600, interval=0.002)
    d = got["one_way_ms"]
    mean, sd = statistics.mean(d), statistics.pstdev(d)
    want_sd = 40 / 3**0.5  # uniform on [-40, +40]
    measured(
        f"{emulator} jitter",
        f"100ms ±40ms (sd {want_sd:.1f}ms)",
        f"mean {mean:.1f}ms sd {sd:.1f}ms range {min(d):.1f}-{max(d):.1f}ms, {got['late']} arrived out of order",
    )
    assert within(mean, 100) and within(sd, want_sd)
    assert min(d) >= 60 * 0.8 and max(d) <= 140 * 1.2
    assert got["late"] > 0  # jitter reorders, as it does under netem


def test_reorder(make_lab: Callable[..., NetLab], emulator: str, measured: Measured) -> None:
    lab = make_lab(["a", "edge"], emulator=emulator)
    lab.impair("edge", Impairment(delay_ms=60, reorder_pct=25))
    got = one_way(lab, "a", "edge", count=1000, interval=0.002)
    early = sum(1 for x in got["one_way_ms"] if x < 30) / got["unique"]
    measured(
        f"{emulator} reorder",
        "25% sent at once, the rest 60ms later",
        f"{early:.1%} at once, {got['late']} of {got['unique']} arrived after a later one",
    )
    assert within(early, 0.25) and got["late"] > 0


def test_duplicate(make_lab: Callable[..., NetLab], emulator: str, measured: Measured) -> None:
    lab = make_lab(["a", "edge"], emulator=emulator)
    lab.impair("edge", down=Impairment(delay_ms=1, duplicate_pct=10))
    got = one_way(lab, "a", "edge", count=3000, interval=0.0005)
    dup = (got["received"] - got["unique"]) / got["unique"]
    measured(f"{emulator} duplicate", "10%", f"{dup:.1%} ({got['received']} received, {got['unique']} distinct)")
    assert got["unique"] == 3000 and within(dup, 0.10)


# --------------------------------------------------------------------------- loss, rate, partition


def test_loss(make_lab: Callable[..., NetLab], measured: Measured) -> None:
    lab = make_lab(["a", "edge"])
    lab.impair("edge", down=Impairment(loss_pct=20))
    got = one_way(lab, "a", "edge", count=3000, interval=0.0005, idle=1.0)
    loss = 1 - got["unique"] / 3000
    measured("nft loss (one way)", "20%", f"{loss:.1%} of 3000")
    assert within(loss, 0.20)
    lab.impair("edge", Impairment(loss_pct=20))
    rt = rtts(lab, "a", "edge", count=1000, interval=0.001, timeout=1.0)
    ok = rt["received"] / 1000
    measured("nft loss (both ways)", "64% of round trips survive", f"{ok:.1%}")
    assert within(ok, 0.64)


@pytest.mark.parametrize("kbit, nbytes", [(1000, 256 << 10), (256, 64 << 10)])
def test_rate(make_lab: Callable[..., NetLab], kbit: int, nbytes: int, measured: Measured) -> None:
    lab = make_lab(["a", "edge"])
    lab.impair("edge", Impairment(rate_kbit=kbit))
    for src, dst, direction in (("a", "edge", "down"), ("edge", "a", "up")):
        sink = lab.probe_server(dst, "tcp-sink", "--bind", f"{lab.ip(dst)}:{PORT}")
        try:
            lab.probe(src, "tcp-send", "--to", f"{lab.ip(dst)}:{PORT}", "--bytes", str(nbytes))
            got = NetLab.collect(sink)
        finally:
            sink.kill()
        goodput = got["bytes"] * 8 / got["seconds"] / 1000
        # TCP/IP/Ethernet headers take ~4.5% of each full frame: goodput is a little under the rate.
        measured(f"tbf rate ({direction})", f"{kbit}kbit/s", f"{goodput:.0f}kbit/s TCP goodput over {nbytes} bytes")
        assert got["bytes"] == nbytes and within(goodput, kbit)


def test_partition_and_heal(make_lab: Callable[..., NetLab]) -> None:
    lab = make_lab(["a", "edge"])
    with lab.partitioned("edge"):
        got = rtts(lab, "a", "edge", count=20, interval=0.005, timeout=0.5)
        assert got["received"] == 0
    got = rtts(lab, "a", "edge", count=20, interval=0.005)
    assert got["received"] == 20


# --------------------------------------------------------------------------- the flaky edge link of scenario 5


def test_the_flaky_edge_link(make_lab: Callable[..., NetLab], emulator: str, measured: Measured) -> None:
    """netem delay 300ms 200ms loss 20% duplicate 2% reorder 25% + 256 kbit/s, as scenario 5 uses it."""
    lab = make_lab(["a", "edge"], emulator=emulator)
    flaky = Impairment(delay_ms=300, jitter_ms=200, loss_pct=20, duplicate_pct=2, reorder_pct=25, rate_kbit=256)
    lab.impair("edge", flaky)
    n = 1500
    got = one_way(lab, "a", "edge", count=n, interval=0.005, idle=2.0)
    d = got["one_way_ms"]
    at_once = [x for x in d if x < 50]
    delayed = [x for x in d if x >= 50]
    loss = 1 - got["unique"] / n
    dup = (got["received"] - got["unique"]) / got["unique"]
    measured(
        f"{emulator} flaky link",
        str(flaky),
        f"delay {statistics.mean(delayed):.0f}ms (range {min(delayed):.0f}-{max(delayed):.0f}), "
        f"{len(at_once) / len(d):.1%} at once, loss {loss:.1%}, duplicate {dup:.1%}, "
        f"{got['late']} out of order",
    )
    assert within(statistics.mean(delayed), 300)
    assert min(delayed) >= 100 * 0.8 and max(delayed) <= 500 * 1.2
    assert within(len(at_once) / len(d), 0.25)
    assert within(loss, 0.20)
    assert 0 < dup < 0.05  # ~40 copies expected: too few for a 20% bound, enough to see it works
