"""Scenario 8 of issue 7: the eight faults at its top, where separate hosts add something.

The faults themselves are tested as processes on loopback by the scheduler's and the
agent's own suites (tests/integration: test_poisoned_reports.py for 1, test_big_pipelines.py
for 2, test_scheduler_startup.py and test_agent_faults.py for 4-7, the watch tests for 8);
they are not repeated here. What hosts with their own network stacks add:

* fault 4, scheduler: a second scheduler on *another host* sharing the state dir (shared
  storage): its port is free there, so only the state-dir lock can stop it; and a second
  scheduler on the same host binding the *host's address* while the first listens on
  0.0.0.0 (an overlap a same-address test does not exercise);
* fault 4, agent: two agents on two hosts sharing one state dir;
* fault 5: a second instance under a live agent name, started from another host;
* fault 3: agents reconnect within a lease after every scheduler restart (measured in
  scenario 6, over 20 restarts, on real links).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.nscluster import SCHED_PORT, NsCluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _run(c: NsCluster, host: str, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a daemon that must refuse to start, on ``host``; fails the test if it keeps running."""
    try:
        return subprocess.run(c.lab.argv(host, argv), capture_output=True, text=True, timeout=timeout, env=c.env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"it kept running: {exc.stderr!r}") from None


def _answers(c: NsCluster, calls: int = 20) -> None:
    for _ in range(calls):
        c.client().list_runs()


def test_a_second_scheduler_on_another_host_sharing_the_state_dir_is_refused(
    make_cluster: Callable[..., NsCluster],
) -> None:
    c = make_cluster(["sched", "sched2"])
    first = c.start_scheduler()
    got = _run(c, "sched2", c.scheduler_argv(ready=c.root / "second.ready"))
    assert got.returncode == 2, got
    assert f"pid {first.pid}" in got.stderr and "in use" in got.stderr, got.stderr
    assert not (c.root / "second.ready").exists() and first.alive()
    _answers(c)


def test_a_second_scheduler_on_the_hosts_address_beside_a_wildcard_listener_is_refused(
    make_cluster: Callable[..., NsCluster], tmp_path: Path
) -> None:
    c = make_cluster(["sched"])
    first = c.start_scheduler()  # listens on 0.0.0.0:7443
    listen = f"{c.sched_ip}:{SCHED_PORT}"
    got = _run(c, "sched", c.scheduler_argv(state_dir=tmp_path / "other", listen=listen, ready=c.root / "2.ready"))
    assert got.returncode == 2, got
    assert listen in got.stderr and "in use" in got.stderr, got.stderr
    assert first.alive()
    _answers(c)


def test_two_agents_on_two_hosts_sharing_a_state_dir(make_cluster: Callable[..., NsCluster]) -> None:
    c = make_cluster(["sched", "h1", "h2"])
    c.start_scheduler()
    shared = c.root / "shared-agent-state"
    one = c.add_agent("one", "h1", state_dir=shared)
    c.wait_agents(["one"])
    two = c.add_agent("two", "h2", state_dir=shared)
    assert two.proc.proc.wait(30) == 2, two.proc.tail()
    assert f"pid {one.proc.pid}" in two.proc.tail() and "in use" in two.proc.tail(), two.proc.tail()
    assert one.proc.alive()


def test_a_second_instance_of_a_live_agent_name_from_another_host_is_refused(
    make_cluster: Callable[..., NsCluster],
) -> None:
    c = make_cluster(["sched", "h1", "h2"])
    c.start_scheduler()
    first = c.add_agent("dup", "h1", labels={"where": "h1"})
    c.wait_agents(["dup"])
    first_id = (first.state_dir / "instance_id").read_text().strip()
    clone = c.add_agent("dup", "h2", labels={"where": "h2"}, state_dir=c.root / "clone-state")
    c.agents["dup"] = first  # the handle the test keeps is the first one
    wait_until(
        lambda: "another instance is connected under the name" in clone.log_path.read_text(errors="replace"),
        30,
        "the clone to be told it was refused",
    )
    (dup,) = [a for a in c.client().list_agents() if a.name == "dup"]
    assert dup.capabilities.labels["where"] == "h1" and dup.instance_id == first_id, dup
    sched_log = (c.logs / "scheduler.log").read_text(errors="replace")
    assert "dup" in sched_log and "instance" in sched_log, "the scheduler's side does not say it refused the clone"
    clone.proc.kill()
