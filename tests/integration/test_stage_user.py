"""``stage_user`` (issue 8) with a real scheduler and agent: an agent running as root starts
its stages as a throwaway system user, who cannot read the agent's key or journal in its
state dir, while the task's outputs are still collected."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster, wait_for
from outrider.pipeline import Pipeline

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="running stages as another user needs root"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd/userdel to make a throwaway user"),
]


@pytest.fixture
def stage_user() -> Iterator[pwd.struct_passwd]:
    """A system user made for this test and removed after it, even when it fails."""
    name = f"ortest{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may pass through (pytest's own tmp root is 0700), for the
    agent's state dir: the stage user must reach its work dir in there."""
    d = Path(tempfile.mkdtemp(prefix="outrider-stage-user-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_stages_run_as_stage_user_and_cannot_read_the_agent_state(
    cluster: LocalCluster, stage_user: pwd.struct_passwd, open_dir: Path, tmp_path: Path
) -> None:
    state = open_dir / "state"
    pki = state / "pki"  # the agent's key lives in its state dir
    cluster.start_scheduler()
    cluster.issue("agent", "a")
    pki.mkdir(parents=True)
    for f in ("ca.crt", "a.crt", "a.key"):
        shutil.copy(cluster.pki / f, pki / f)
    cluster.add_agent("a", state_dir=state, extra_args=["--pki-dir", str(pki), "--stage-user", stage_user.pw_name])
    cluster.wait_agents(["a"])

    p = Pipeline("as-user")
    p.task(
        "probe",
        run=(
            "id -u > $OUTRIDER_OUTPUTS/uid\n"
            "touch ./made-in-cwd && echo ok > $OUTRIDER_OUTPUTS/cwd\n"
            "try() { if \"$@\" >/dev/null 2>&1; then echo \"$* readable\"; else echo \"$* denied\"; fi; }\n"
            f"{{ try cat {pki}/a.key; try ls {state}/journal; try ls {state}; try cat {state}/instance_id\n"
            f"try python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"{state}/keeper.sock\")'\n"
            "} > $OUTRIDER_OUTPUTS/access\n"
            "echo '{\"name\": \"as_user\", \"value\": 1}' >> $OUTRIDER_METRICS_FILE\n"  # its own file: read
        ),
        outputs=["uid", "cwd", "access"],
    )
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        outputs = {o.name: o.digest for o in status.tasks[0].outputs}
        got = {name: client.download(d, tmp_path / name).read_text() for name, d in outputs.items()}
        recorded = client.stage_metrics([run_id])[0].metrics
    assert [(m.task, m.name, m.value) for m in recorded] == [("probe", "as_user", 1.0)]
    assert got["uid"].strip() == str(stage_user.pw_uid)
    assert got["cwd"].strip() == "ok"
    lines = got["access"].splitlines()
    assert len(lines) == 5 and all(line.endswith(" denied") for line in lines), lines
    assert (state.stat().st_mode & 0o777) == 0o711
    assert cluster.agents["a"].tail(200).count(f"stages run as {stage_user.pw_name}") == 1

    def stage_owned() -> list[Path]:
        return [p for p in (state / "work").iterdir() if p.lstat().st_uid == stage_user.pw_uid]

    wait_for(lambda: not stage_owned(), 10, "the stage's work dir to be removed (never recycled)")
