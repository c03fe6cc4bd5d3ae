"""A fan-out/fan-in DAG with artifacts across two agents; retries; failure propagation."""
from __future__ import annotations

from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline

pytestmark = pytest.mark.timeout(90)


def test_fan_out_fan_in_with_artifacts(two_agents: LocalCluster, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "square.py").write_text(
        "import os, pathlib\n"
        "n = int(pathlib.Path(os.environ['OUTRIDER_INPUTS'], 'seed').read_text())\n"
        "k = int(os.environ['K'])\n"
        "pathlib.Path(os.environ['OUTRIDER_OUTPUTS'], 'sq').write_text(f'{(n + k) ** 2}\\n')\n"
    )
    p = Pipeline("fan", code=code)
    p.task("seed", run="echo 3 > $OUTRIDER_OUTPUTS/n", outputs=["n"], requires={"labels": {"tier": "a"}})
    for k in range(4):
        p.task(f"sq{k}", run=["python3", "square.py"], inputs={"seed": "seed.n"}, outputs=["sq"],
               env={"K": str(k)}, requires={"labels": {"tier": "b" if k % 2 else "a"}})
    p.task(
        "sum",
        run='mkdir $OUTRIDER_OUTPUTS/total && cat $OUTRIDER_INPUTS/s0 $OUTRIDER_INPUTS/s1 $OUTRIDER_INPUTS/s2 '
            '$OUTRIDER_INPUTS/s3 | tr "\\n" " " > $OUTRIDER_OUTPUTS/total/values; echo "trace=$TRACEPARENT '
            'task=$OUTRIDER_TASK attempt=$OUTRIDER_ATTEMPT run=$OUTRIDER_RUN_ID"',
        inputs={f"s{k}": f"sq{k}.sq" for k in range(4)}, outputs=["total"], requires={"labels": {"tier": "b"}},
    )
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        tasks = {t.name: t for t in status.tasks}
        assert {tasks[f"sq{k}"].agent for k in range(4)} == {"a", "b"}
        assert tasks["sum"].agent == "b"
        total = {o.name: o for o in tasks["sum"].outputs}["total"]
        assert total.kind == "dir"
        dest = client.download(total.digest, tmp_path / "total.tar")
        from outrider.artifacts import unpack_dir

        unpack_dir(dest, tmp_path / "total")
        assert sorted(int(x) for x in (tmp_path / "total" / "values").read_text().split()) == [9, 16, 25, 36]
        log = b"".join(line.data for line in client.logs(run_id, "sum")).decode()
        assert f"run={run_id}" in log and "task=sum attempt=1" in log
        assert "trace=00-" in log and log.split("trace=")[1].split()[0].count("-") == 3


def test_failing_stage_is_retried_then_succeeds(two_agents: LocalCluster) -> None:
    p = Pipeline("flaky")
    # Fails on attempt 1, succeeds on attempt 2.
    p.task("flaky", run='test "$OUTRIDER_ATTEMPT" -ge 2 || { echo boom >&2; exit 3; }',
           retries={"max": 2, "backoff": "100ms"})
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        (task,) = status.tasks
        assert status.state == "succeeded"
        assert task.attempts == 2
        logs = [(line.attempt, line.data) for line in client.logs(run_id, "flaky")]
        assert (1, b"boom\n") in logs


def test_permanent_failure_marks_downstream_and_spares_independent_branch(two_agents: LocalCluster) -> None:
    p = Pipeline("branches")
    p.task("bad", run="exit 7")
    p.task("after_bad", run="true", after=["bad"])
    p.task("good", run="echo fine")
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        tasks = {t.name: t for t in status.tasks}
        assert status.state == "failed"
        assert tasks["bad"].state == "failed" and tasks["bad"].exit_code == 7
        assert "exit code 7" in tasks["bad"].error
        assert tasks["after_bad"].state == "upstream_failed"
        assert tasks["good"].state == "succeeded"


def test_missing_declared_output_fails_with_clear_message(two_agents: LocalCluster) -> None:
    p = Pipeline("lazy")
    p.task("lazy", run="true", outputs=["model"])
    with two_agents.client() as client:
        status = client.wait(client.submit(p).run_id, timeout=60)
        (task,) = status.tasks
        assert task.state == "failed"
        assert "declared output(s) missing: model" in task.error
