"""``/metrics`` on a live scheduler, checked by promtool, and the example alert rules.

One cluster for the module: a scheduler serving HTTP on loopback and one agent (which
sends its figures with each heartbeat). A small pipeline runs (an output uploaded, then
downloaded by its consumer), one call is refused, then the scrape is read and handed to
``promtool check metrics``; last, the agent is killed and the silent-agent alert shows
on ``/metrics`` and, to an admin, in the event stream (``outrider events``). promtool comes from Debian's
``prometheus`` package (``make sysdeps``); without it those checks skip saying so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from outrider.client_events import events
from outrider.errors import NotFound
from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "outrider-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (Debian's `prometheus` package; `make sysdeps` installs it)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


WATCH = "outrider.v1.ControlService/SubmitAndWatch"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(body: str) -> Samples:
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape_until(url: str, ok: object, what: str, timeout: float = 30.0) -> tuple[str, Samples]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = fetch(url)
        if status == 200:
            s = samples(body)
            if ok(s):  # type: ignore[operator]
                return body, s
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never showed {what}; last scrape:\n{body[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    c = LocalCluster(tmp_path_factory.mktemp("metrics") / "cluster", heartbeat_interval="0.5s", lease_ttl="3s")
    try:
        port = free_port()
        c.start_scheduler(["--http-listen", f"127.0.0.1:{port}"])
        c.add_agent("edge-1", slots=2)
        c.wait_agents(["edge-1"])
        yield c, f"http://127.0.0.1:{port}/metrics"
    finally:
        c.stop()


def pipeline() -> Pipeline:
    p = Pipeline("metrics")
    p.task("make", run='head -c 100000 /dev/zero > "$OUTRIDER_OUTPUTS/o"', outputs=["o"])
    p.task("use", run='test "$(wc -c < "$OUTRIDER_INPUTS/i")" -eq 100000', inputs={"i": "make.o"})
    return p


def test_a_live_scrape_holds_the_pipeline_the_agent_and_passes_promtool(
    cluster: tuple[LocalCluster, str], tmp_path: Path
) -> None:
    c, url = cluster
    with c.client() as client:
        status = client.run(pipeline(), timeout=60)
        assert status.state == "succeeded", status
        made = next(t for t in status.tasks if t.name == "make").outputs[0]
        client.download(made.digest, tmp_path / "o")  # bytes out (the agent kept its own copy)
        with pytest.raises(NotFound):
            client.get_run("run-nope")
    edge = (("agent", "edge-1"),)
    body, s = scrape_until(
        url,
        lambda s: (
            ("outrider_agent_outbox_depth", edge) in s
            and s.get(("outrider_tasks", (("state", "succeeded"),)), 0) >= 2
            and any(WATCH in str(k) for n, k in s if n == "outrider_rpcs_total")  # the stream's end is counted
        ),
        "the agent's figures, the pipeline's tasks and the end of its SubmitAndWatch stream",
    )
    status_code, ctype, _ = fetch(url)
    assert status_code == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert s[("outrider_runs", (("state", "succeeded"),))] >= 1
    assert s[("outrider_lease_grants_total", ())] >= 2
    assert s[("outrider_queue_wait_seconds_count", ())] >= 2
    assert s[("outrider_dispatch_latency_seconds_count", ())] >= 1
    assert s[("outrider_store_commit_seconds_count", ())] >= 1
    assert s[("outrider_artifact_bytes_total", (("direction", "in"),))] >= 100000
    assert s[("outrider_artifact_bytes_total", (("direction", "out"),))] >= 100000
    rpc = {labels: v for (name, labels), v in s.items() if name == "outrider_rpcs_total"}
    # The run's watch stream: it ended with the run (OK), or the client hung up first once it had the end.
    watched = {dict(k)["code"]: v for k, v in rpc.items() if dict(k)["method"] == WATCH}
    assert sum(watched.values()) == 1 and set(watched) <= {"OK", "CANCELLED"}, watched
    assert rpc[(("code", "NOT_FOUND"), ("method", "outrider.v1.ControlService/GetRun"))] == 1
    assert rpc[(("code", "OK"), ("method", "outrider.v1.AgentService/Register"))] >= 1
    assert s[("outrider_agent_connected", edge)] == 1
    assert s[("outrider_agent_slots_free", edge)] == 2
    assert s[("outrider_agent_disk_free_bytes", edge)] > 0
    assert s[("outrider_agent_disk_size_bytes", edge)] >= s[("outrider_agent_disk_free_bytes", edge)]
    assert 0 <= s[("outrider_agent_last_heartbeat_age_seconds", edge)] < 10
    assert s[("outrider_agent_silent", edge)] == 0
    assert s[("outrider_alerts_active", (("alert", "agent_silent"),))] == 0
    if PROMTOOL is not None:
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, text=True, capture_output=True, timeout=60)
        assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"


@needs_promtool
def test_the_example_alert_rules_pass_promtool() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check rules {RULES}:\n{check.stdout}{check.stderr}"
    assert "SUCCESS" in check.stdout


def test_a_killed_agent_raises_the_silent_alert_as_metric_and_event(cluster: tuple[LocalCluster, str]) -> None:
    c, url = cluster
    c.agents["edge-1"].kill()  # no drain: a crash (the lease TTL is 3 s here)
    _, s = scrape_until(url, lambda s: s.get(("outrider_agent_silent", (("agent", "edge-1"),))) == 1, "edge-1 silent")
    connect = "outrider.v1.AgentService/Connect"
    rpcs = [(dict(k), v) for (n, k), v in s.items() if n == "outrider_rpcs_total"]
    ended = {k["code"]: v for k, v in rpcs if k["method"] == connect}
    # Its work stream, ended by the crash: the scheduler sees the stream end (OK) or the call cancelled.
    assert sum(ended.values()) == 1 and set(ended) <= {"OK", "CANCELLED"}, ended
    deadline = time.monotonic() + 30
    with c.client("ops", role="admin") as admin:
        while True:  # what `outrider events` shows an admin: the alert, an event of no run
            seen = [(e.run_id, e.state, e.agent, e.message) for e in events(admin)]
            if any(e[:3] == ("", "alert", "edge-1") and e[3].startswith("agent_silent edge-1: ") for e in seen):
                break
            assert time.monotonic() < deadline, f"no agent_silent event: {seen[-5:]}"
            time.sleep(0.1)
    with c.client() as submitter:  # it belongs to no run: a submitter sees only its own runs' events
        assert all(e.run_id for e in events(submitter))
