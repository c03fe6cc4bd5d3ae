"""Fixtures that start a real scheduler and real agents as processes (port 0, test CA).

Every process is ended, and every stage process left behind is killed, even
when the test fails. A failing test prints the daemons' log tails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from outrider.localcluster import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A scheduler with short leases (3 s, or the test module's ``LEASE_TTL``) so fault tests
    finish quickly; no agents yet."""
    ttl = getattr(request.module, "LEASE_TTL", "3s")
    c = LocalCluster(tmp_path / "cluster", lease_ttl=ttl, heartbeat_interval="0.5s")
    try:
        yield c
    finally:
        c.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for d in [c.scheduler, *c.agents.values()]:
                if d is not None:
                    print(f"\n----- {d.name} log (tail) -----\n{d.tail(80)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def two_agents(cluster: LocalCluster) -> LocalCluster:
    """The scheduler plus agents ``a`` (tier=a) and ``b`` (tier=b), two slots each."""
    cluster.start_scheduler()
    cluster.add_agent("a", labels={"tier": "a"}, slots=2)
    cluster.add_agent("b", labels={"tier": "b"}, slots=2)
    cluster.wait_agents(["a", "b"])
    return cluster
