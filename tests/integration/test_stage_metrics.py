"""Stage metrics end to end: stages log figures (``outrider.metrics.log`` and the raw JSON-lines
file), the agent reads them when each attempt ends, the scheduler stores them per attempt;
``outrider status`` shows them and ``outrider metrics`` compares runs; a hostile file is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrider import metrics
from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.timeout(120)

TRAIN = """\
import sys
from outrider import metrics
base = float(sys.argv[1])
for step in (1, 2, 3):
    metrics.log("accuracy", base + step / 100, step=step)
metrics.log("rows_dropped", 2)
"""
FLAKY = """\
import os, sys
from outrider import metrics
attempt = int(os.environ["OUTRIDER_ATTEMPT"])
metrics.log("loss", 1.0 / attempt, step=attempt)
sys.exit(0 if attempt >= 2 else 1)
"""
HOSTILE = """\
import json, os
with open(os.environ["OUTRIDER_METRICS_FILE"], "w") as f:
    f.write("not json\\n")
    f.write('{"name": "x", "value": NaN}\\n')
    for i in range(150):
        f.write(json.dumps({"name": f"m{i}", "value": i}) + "\\n")
    f.write("x" * (2 << 20))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("metrics") / "cluster", lease_ttl="3s", heartbeat_interval="0.5s")
    try:
        c.start_scheduler()
        c.add_agent("a", slots=4)
        c.wait_agents(["a"])
        yield c
    finally:
        c.stop()


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.client_env(), *args)


def _ok(cluster: LocalCluster, *args: str) -> str:
    res = _cli(cluster, *args)
    assert res.returncode == 0, f"outrider {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _pipeline(scripts: Path, base: float) -> Pipeline:
    py = sys.executable
    p = Pipeline("scored")
    p.task("train", run=f"{py} {scripts / 'train.py'} {base}")
    p.task("flaky", run=f"{py} {scripts / 'flaky.py'}", retries={"max": 2, "backoff": "100ms"})
    p.task("hostile", run=f"{py} {scripts / 'hostile.py'}")
    return p


def test_stages_log_metrics_status_and_metrics_show_them(cluster: LocalCluster, tmp_path: Path) -> None:
    for name, text in (("train.py", TRAIN), ("flaky.py", FLAKY), ("hostile.py", HOSTILE)):
        (tmp_path / name).write_text(text)
    with cluster.client() as client:
        first = client.submit(_pipeline(tmp_path, 0.9)).run_id
        second = client.submit(_pipeline(tmp_path, 0.8)).run_id
        for run_id in (first, second):
            assert client.wait(run_id, timeout=60).state == "succeeded"

    st = json.loads(_ok(cluster, "status", first, "--json"))
    train = st["tasks"]["train"]
    assert train["metrics"]["accuracy"] == {
        "value": pytest.approx(0.93), "step": 3, "attempt": 1, "ts": pytest.approx(st["created_at"], abs=120),
        "count": 3}
    assert train["metrics"]["rows_dropped"]["value"] == 2 and train["metrics"]["rows_dropped"]["step"] is None
    assert train["metrics_skipped"] is None
    # Attempt 1 failed, attempt 2 succeeded: both recorded, the latest one shown.
    assert st["tasks"]["flaky"]["metrics"]["loss"] == {
        "value": 0.5, "step": 2, "attempt": 2, "ts": pytest.approx(st["created_at"], abs=120), "count": 1}
    # The hostile file: at most MAX_NAMES names kept, every line not taken counted, the first reason given.
    hostile = st["tasks"]["hostile"]
    assert len(hostile["metrics"]) == metrics.MAX_NAMES and hostile["metrics"]["m0"]["value"] == 0
    skipped = hostile["metrics_skipped"]
    assert skipped["attempt"] == 1 and skipped["count"] == 2 + 50 + 1
    assert skipped["reason"] == "line 1: not a JSON object"

    text = _ok(cluster, "status", first)
    assert "accuracy" in text and "0.93 @3" in text and "skipped 53 line(s)" in text

    table = _ok(cluster, "metrics", first, second)
    header, *rows = table.splitlines()
    assert header.split() == ["TASK", "NAME", first, second]
    assert ["train", "accuracy", "0.93", "@3", "0.83", "@3"] in [r.split() for r in rows]

    cmp = json.loads(_ok(cluster, "metrics", first, second, "--json"))
    assert cmp["runs"] == [first, second]
    acc = cmp["tasks"]["train"]["accuracy"]
    assert acc[first]["value"] == pytest.approx(0.93) and acc[second]["value"] == pytest.approx(0.83)
    assert cmp["skipped"][second]["hostile"]["count"] == 53

    # Run ids by unique prefix, as everywhere; a run that does not exist is NOT_FOUND (exit 5).
    assert _ok(cluster, "metrics", first[:-2]).splitlines()[0].split() == ["TASK", "NAME", first]
    missing = _cli(cluster, "metrics", first, "run-1-abcdef")
    assert missing.returncode == 5 and "no run 'run-1-abcdef'" in missing.stderr, missing
