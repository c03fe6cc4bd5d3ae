"""An agent (or a CLI user) whose certificate expired says so and stops, against real processes.

* At start, an expired certificate (it was offline longer than its lifetime): ``outrider-agent``
  exits with its own code (78, in the unit's ``RestartPreventExitStatus=``) and a message that
  says when it expired and how to enrol again; it never dials.
* Not valid yet (this machine's clock is behind): a message naming both times, exit 2 (systemd
  retries: the clock may be put right).
* While it runs: a certificate that expires before it could be renewed stops the reconnect loop
  (exit 78, the same message) instead of dialing forever.
* ``outrider`` with an expired certificate: the error says so (exit 4, UNAUTHENTICATED), no
  "UNAVAILABLE" from a handshake the scheduler refused.
"""
from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from outrider.localcluster import Daemon, LocalCluster
from tests.helpers import badcerts

pytestmark = pytest.mark.timeout(120)

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _agent(cluster: LocalCluster, name: str, cert: Path, key: Path, scheduler: str) -> Daemon:
    argv = [sys.executable, "-m", "agent.main", "--scheduler", scheduler, "--ca", str(cluster.pki / "ca.crt"),
            "--cert", str(cert), "--key", str(key), "--state-dir", str(cluster.root / "agents" / name),
            "--slots", "1", "--bandwidth-probe-bytes", "0"]
    d = Daemon(name, argv, cluster.root / "logs" / f"agent-{name}.log", cluster.env)
    d.start()
    cluster.agents[name] = d
    return d


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_an_agent_whose_certificate_expired_offline_exits_78_saying_to_enrol_again(cluster: LocalCluster) -> None:
    address = cluster.start_scheduler()
    domain = cluster.trust_domain
    cert, key = badcerts.leaf(cluster.pki, cluster.root / "certs", "late", [f"spiffe://{domain}/agent/late"],
                              not_before=_now() - 3 * DAY, not_after=_now() - DAY)
    agent = _agent(cluster, "late", cert, key, address)
    assert agent.wait(60) == 78
    out = agent.tail()
    assert "this agent's certificate" in out and "expired at" in out, out
    assert "offline longer than its lifetime" in out
    assert f"outrider-agent join --scheduler {address} --token" in out and "--ca-fingerprint" in out
    assert "registered with" not in out  # it never dialed


def test_an_agent_whose_certificate_is_not_valid_yet_blames_the_clock(cluster: LocalCluster) -> None:
    cluster.init_pki()
    domain = cluster.trust_domain
    cert, key = badcerts.leaf(cluster.pki, cluster.root / "certs", "early", [f"spiffe://{domain}/agent/early"],
                              not_before=_now() + DAY, not_after=_now() + 3 * DAY)
    agent = _agent(cluster, "early", cert, key, _closed_port())
    assert agent.wait(60) == 2
    out = agent.tail()
    assert "is not valid until" in out and "clock" in out, out


def test_a_certificate_expiring_while_the_agent_reconnects_stops_the_loop(cluster: LocalCluster) -> None:
    cluster.init_pki()
    domain = cluster.trust_domain
    lifetime = 6.0
    cert, key = badcerts.leaf(cluster.pki, cluster.root / "certs", "brief", [f"spiffe://{domain}/agent/brief"],
                              not_before=_now() - DAY, not_after=_now() + datetime.timedelta(seconds=lifetime))
    started = time.monotonic()
    agent = _agent(cluster, "brief", cert, key, _closed_port())  # nothing listens: it keeps reconnecting
    assert agent.wait(90) == 78
    assert time.monotonic() - started >= lifetime - 1  # it started and tried (its certificate was good then)
    out = agent.tail()
    assert "reconnecting in" in out and "expired at" in out and "outrider-agent join" in out, out


def test_the_cli_with_an_expired_certificate_says_so(cluster: LocalCluster) -> None:
    address = cluster.start_scheduler()
    domain = cluster.trust_domain
    cert, key = badcerts.leaf(cluster.pki, cluster.root / "certs", "old-user", [f"spiffe://{domain}/submitter/old"],
                              not_before=_now() - 3 * DAY, not_after=_now() - DAY)
    env = {**cluster.env, "OUTRIDER_SCHEDULER": address, "OUTRIDER_CA": str(cluster.pki / "ca.crt"),
           "OUTRIDER_CERT": str(cert), "OUTRIDER_KEY": str(key)}
    res = subprocess.run([sys.executable, "-m", "outrider.cli", "agents"], env=env, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 4, res
    assert f"your certificate ({cert}) expired at" in res.stderr and "ask an admin for a new one" in res.stderr
    res = subprocess.run([sys.executable, "-m", "outrider.cli", "agents", "--json"], env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 4
    error = json.loads(res.stdout)["error"]
    assert error["code"] == "UNAUTHENTICATED" and "expired at" in error["message"], res


@pytest.mark.slow
def test_a_certificate_expiring_while_connected_ends_its_stream_and_the_agent_exits_78(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Connected when it expires, and not renewed (this scheduler has no CA key to renew with):
    the scheduler ends its work stream (the per-call check saw it valid when the stream opened;
    open streams are checked again every few seconds), and the agent, about to reconnect, sees
    its certificate expired and exits 78."""
    import shutil

    cluster.init_pki()
    keyless = tmp_path / "keyless-pki"  # no ca.key: renewal is refused, so the certificate really expires
    keyless.mkdir()
    for name in ("ca.crt", "scheduler.crt", "scheduler.key", "trust_domain"):
        shutil.copy(cluster.pki / name, keyless / name)
    address = cluster.start_scheduler(["--pki-dir", str(keyless)])
    domain = cluster.trust_domain
    lifetime = 10.0
    cert, key = badcerts.leaf(cluster.pki, cluster.root / "certs", "short", [f"spiffe://{domain}/agent/short"],
                              not_before=_now() - datetime.timedelta(seconds=1),
                              not_after=_now() + datetime.timedelta(seconds=lifetime))
    agent = _agent(cluster, "short", cert, key, address)
    cluster.wait_agents(["short"], timeout=lifetime - 1)
    assert agent.wait(60) == 78
    out = agent.tail(80)
    assert "registered with" in out and "expired at" in out and "outrider-agent join" in out, out
    assert "checked again while its stream was open" in out  # the scheduler ended the stream
    log = (cluster.root / "logs" / "scheduler.log").read_text()
    assert "ended 1 open stream(s) whose certificate expired" in log
