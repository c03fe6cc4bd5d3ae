"""Fixtures of the fault suite: labs and clusters that are always removed, and the figures report.

* ``lab_support`` (session): skips the whole directory, with the reason, where the lab
  cannot run (not root, no ``ip``/``nft``, no namespaces); sweeps what a crashed earlier
  run left; turns SIGTERM into KeyboardInterrupt so that a killed run still tears down;
  and checks at the end that no namespace of this run is left.
* ``make_lab(hosts)`` / ``make_cluster(hosts, ...)``: a ``NetLab`` / an ``NsCluster`` on
  one, closed after the test whatever happened (daemons first, then the namespaces).
  A failing test prints the daemons' log tails.
* ``figures`` / ``measured``: scenarios hand their ``Figures``, the emulator self-test its
  asked-vs-measured lines; all are printed at the end of the session (``pytest -q`` hides
  a passing test's output), with each test's duration.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import netlab
from tests.faults.netlab import NetLab
from tests.faults.nscluster import NsCluster
from tests.faults.workload import Figures

_FIGURES: list[Figures] = []
_MEASURED: list[str] = []
_DURATIONS: dict[str, float] = {}


@pytest.fixture(scope="session")
def lab_support() -> Iterator[None]:
    reason = netlab.unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    swept = netlab.sweep()
    if swept:
        print(f"[faults] removed {len(swept)} namespace(s) left by an earlier run: {swept}")

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        mine = f"{netlab.PREFIX_ROOT}{os.getpid()}x"
        left = [ns for ns in netlab.netns_list() if ns.startswith(mine)]
        for ns in left:
            netlab.kill_netns(ns)
        assert not left, f"namespaces left behind by this run (now removed): {left}"


@pytest.fixture
def make_lab(lab_support: None) -> Iterator[Callable[..., NetLab]]:
    labs: list[NetLab] = []

    def make(hosts: list[str], **kwargs: Any) -> NetLab:
        lab = NetLab(hosts, **kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.close()
            except netlab.LabError as exc:
                errors.append(str(exc))
        assert not errors, errors


@pytest.fixture
def make_cluster(
    make_lab: Callable[..., NetLab], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., NsCluster]]:
    clusters: list[NsCluster] = []

    def make(hosts: list[str], **kwargs: Any) -> NsCluster:
        lab = make_lab(hosts)
        c = NsCluster(lab, tmp_path / f"cluster{len(clusters)}", **kwargs)
        clusters.append(c)
        return c

    try:
        yield make
    finally:
        rep = getattr(request.node, "rep_call", None)
        for c in clusters:
            if rep is not None and rep.failed:
                print(f"\n{c.logs_tail(40)}")
            c.close()


@pytest.fixture
def figures() -> Callable[[Figures], None]:
    return _FIGURES.append


@pytest.fixture
def measured() -> Callable[[str, str, str], None]:
    """The emulator self-test's figures: what was asked of a link, what a packet got."""

    def note(what: str, asked: str, got: str) -> None:
        line = f"[netlab] {what}: asked {asked}, measured {got}"
        print(line)
        _MEASURED.append(line)

    return note


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    if rep.when == "call" and "tests/faults" in str(item.path):
        _DURATIONS[item.nodeid] = rep.duration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    start = time.monotonic()
    yield
    if "tests/faults" in str(item.path):
        _DURATIONS[item.nodeid + " (with setup/teardown)"] = time.monotonic() - start


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _DURATIONS and not _FIGURES:
        return
    tr = terminalreporter
    tr.section("fault suite: figures and durations")
    for line in _MEASURED:
        tr.write_line(line)
    for f in _FIGURES:
        tr.write_line(f.summary())
    for nodeid, secs in _DURATIONS.items():
        if not nodeid.endswith("(with setup/teardown)"):
            total = _DURATIONS.get(nodeid + " (with setup/teardown)", secs)
            tr.write_line(f"{secs:7.1f}s ({total:.1f}s in all)  {nodeid}")
