"""Scenario 7 of issue 7: agents whose NTP source says their clock is off by +1 h and by −10 min.

Each agent takes ``--ntp-servers`` pointing at an NTP responder inside the lab (on the
scheduler's host) that serves this machine's time plus an offset, so the agent believes
its clock is wrong by that much (a network namespace cannot have its own wall clock;
the NTP source is how an agent learns its offset, so that is where the fault goes).
Leases are timed on the scheduler's monotonic clock and renewed by heartbeats, so no
lease may expire because of it: every task runs once, with no lost attempt, while its
stages run for longer than a lease. The agents' reported offsets prove the fault was seen
(``outrider agents`` shows them, clock-suspect).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.faults.nscluster import NsCluster
from tests.faults.scenario import Scenario
from tests.faults.workload import Figures, Shape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

OFFSETS = {"ahead": 3600.0, "behind": -600.0}
SHAPE = Shape(steps=40)  # 4 s per train: longer than the 3 s lease


def test_agent_clock_offsets_cause_no_false_lease_expiry(
    make_cluster: Callable[..., NsCluster], figures: Callable[[Figures], None]
) -> None:
    c = make_cluster(["sched", "ahead", "behind"], lease_ttl="3s")
    c.start_scheduler()
    for name, offset in OFFSETS.items():
        ntp = c.ntp_server("sched", offset)
        c.add_agent(name, labels={"clock": name}, slots=4, ntp=[ntp.address])
    c.wait_agents(list(OFFSETS))
    s = Scenario("7. agent clock offsets +1h and -10min via NTP", c, SHAPE)
    for name in OFFSETS:
        s.submit(2, train_on={"clock": name}, others_on={"clock": name}, prefix=name)
    statuses = s.wait_runs(90)
    seen = {a["name"]: a for a in json.loads(c.cli("agents", "--json"))}
    for name, offset in OFFSETS.items():
        ntp_samples = [x for x in seen[name]["clock"] if x["source"].startswith("ntp:")]
        s.notes.append(f"agent {name}: NTP offset {offset:+g}s; reported {ntp_samples}")
        assert ntp_samples and abs(ntp_samples[0]["offset_s"] - offset) < 1.0, seen[name]
    fig = s.finish(statuses, figures)
    fig.check()
    lost = [(t.run_id, t.task, t.attempts) for t in fig.tasks if t.lost_attempts or len(t.attempts) != 1]
    assert not lost, f"false lease expiry (attempts lost or repeated): {lost}"
