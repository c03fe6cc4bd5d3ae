"""Issue 8, hostile input 3 and 4, against a real scheduler and agents: a stage output that
is a symlink may lead only inside its outputs dir, and a directory artifact is extracted
only as a plain tar, within bounds (in a work dir and by ``outrider artifact get --extract``)."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline

pytestmark = pytest.mark.timeout(90)


def _gzip_bomb(path: Path, size: int = 2 << 20) -> Path:
    """A gzip tar of a file of zeros: a few KiB that expand to ``size`` bytes."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_an_output_linking_to_etc_passwd_fails_the_task(two_agents: LocalCluster) -> None:
    p = Pipeline("leak")
    p.task("leak", run='ln -s /etc/passwd "$OUTRIDER_OUTPUTS/out"', outputs=["out"])
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        (task,) = status.tasks
        assert (status.state, task.state) == ("failed", "failed"), status
        assert "output 'out': the symlink out -> '/etc/passwd' points outside the outputs dir" in task.error
        assert list(task.outputs) == []
        # The task's fault, not the agent's: both agents still take work.
        assert task.error.startswith("output 'out'") and task.attempts == 1
        assert [a.unhealthy for a in client.list_agents()] == ["", ""]


def test_an_output_linking_inside_the_outputs_dir_is_published_as_its_target(
    two_agents: LocalCluster, tmp_path: Path
) -> None:
    p = Pipeline("links")
    p.task(
        "make",
        run='cd "$OUTRIDER_OUTPUTS" && echo hello > real && ln -s real out && mkdir -p d/v1 && echo w > d/v1/w '
            '&& ln -s v1 d/latest && ln -s "$OUTRIDER_OUTPUTS/real" d/readme',
        outputs=["out", "d"],
        requires={"labels": {"tier": "a"}},
    )
    p.task("use", run='cat "$OUTRIDER_INPUTS/out" "$OUTRIDER_INPUTS/d/latest/w" "$OUTRIDER_INPUTS/d/readme"',
           inputs={"out": "make.out", "d": "make.d"}, requires={"labels": {"tier": "b"}})
    with two_agents.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        tasks = {t.name: t for t in status.tasks}
        outs = {o.name: o for o in tasks["make"].outputs}
        assert (outs["out"].kind, outs["out"].size, outs["d"].kind) == ("file", 6, "dir")
        log = b"".join(line.data for line in client.logs(run_id, "use")).decode()
        assert log == "hello\nw\nhello\n"


def test_a_compressed_directory_artifact_is_never_inflated(two_agents: LocalCluster, tmp_path: Path) -> None:
    """A 2 MiB gzip bomb posing as a directory artifact: the agent refuses it as a code bundle,
    and so does ``outrider artifact get --extract``; nothing is extracted."""
    bomb = _gzip_bomb(tmp_path / "bomb.tar.gz")
    with two_agents.client() as client:
        ref = client.upload_file(bomb, kind="dir")
        p = Pipeline("bomb", code_digest=ref.digest)
        p.task("t", run="true")
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        (task,) = status.tasks
        assert task.state == "failed" and "artifact archive is compressed or not a tar" in task.error, status
    dest = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "outrider.cli", "artifact", "get", ref.digest, "--extract", "-o", str(dest)],
        env=two_agents.client_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert res.returncode != 0 and "artifact archive is compressed or not a tar" in res.stderr, res
    assert not dest.exists() or list(dest.iterdir()) == []
