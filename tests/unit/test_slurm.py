"""The Slurm executor (issue 9) without a Slurm: the sbatch line a task's ``requires`` make,
the job script and its environment file, what squeue/scontrol/sinfo print as read, how each
Slurm state ends a task, and the executor driven through a fake command runner. The real
Slurm runs in tests/integration/test_slurm.py."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from agent.slurm import SlurmExecutor
from agent.slurmcmd import (
    JobState,
    SlurmSettings,
    advertise,
    parse_scontrol_jobs,
    parse_sinfo,
    parse_squeue,
    sbatch_args,
    verdict,
    write_job_files,
)
from outrider import pki
from outrider.errors import ConfigError
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2


def in_loop(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test in a fresh event loop, bounded to 10 s."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 10))

    return run


SETTINGS = SlurmSettings("gpu", "ml-team", "/shared/work", ("--qos=low",))


def _assignment(timeout_s: float = 0.0, **requires: int | float) -> agent_pb2.Assignment:
    return agent_pb2.Assignment(
        lease=common_pb2.LeaseRef(run_id="run-1", task="train", epoch=2),
        spec=common_pb2.TaskSpec(
            argv=["python", "train.py"],
            timeout_s=timeout_s,
            requires=common_pb2.Requirements(**requires),  # type: ignore[arg-type]
            secret_env={"TOKEN": "s3cret"},
        ),
    )


# ----------------------------------------------------------------------- sbatch and the script


def test_requires_become_sbatch_flags() -> None:
    a = _assignment(timeout_s=90, cpus=2.5, memory_bytes=64 << 20, gpus=2)
    args = sbatch_args(SETTINGS, a.lease, a.spec, "/shared/work/w1")
    assert args[:2] == ["sbatch", "--parsable"]
    for flag in (
        "--job-name=outrider:run-1:train:2",
        "--partition=gpu",
        "--account=ml-team",
        "--cpus-per-task=3",  # (whole CPUs, rounded up)
        "--mem=64M",
        "--gres=gpu:2",
        "--time=3",  # 90 s: 2 minutes rounded up, plus one (the agent's own timeout comes first)
        "--chdir=/shared/work/w1",
        "--output=/shared/work/w1/.outrider/stdout",
        "--error=/shared/work/w1/.outrider/stderr",
        "--no-requeue",
        "--qos=low",
    ):
        assert flag in args, (flag, args)
    assert args[-1] == "/shared/work/w1/.outrider/slurm.sh"
    assert not any("s3cret" in x for x in args)


def test_no_requires_no_flags_for_them() -> None:
    a = _assignment()
    args = sbatch_args(SlurmSettings("debug"), a.lease, a.spec, "/w")
    assert "--cpus-per-task=1" in args
    assert not [x for x in args if x.startswith(("--mem", "--gres", "--time", "--account"))]


def test_the_script_sources_a_private_env_file_and_keeps_the_exit_code(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / ".outrider").mkdir(parents=True)
    (work / ".outrider" / "slurm.exit").write_text("0\n")  # a previous job's: never read as this one's
    env = {"TOKEN": "it's a $ecret", "PLAIN": "x y"}
    script = write_job_files(str(work), ["/bin/sh", "-c", 'echo "$TOKEN|$PLAIN|$(pwd)"; exit 7'], env)
    envfile = work / ".outrider" / "slurm.env"
    assert stat.S_IMODE(envfile.stat().st_mode) == 0o600
    assert not (work / ".outrider" / "slurm.exit").exists()
    assert "ecret" not in script.read_text()  # only in the 0600 file
    res = subprocess.run(["/bin/sh", str(script)], cwd="/", capture_output=True, text=True, timeout=10)
    assert res.returncode == 7
    assert res.stdout == f"it's a $ecret|x y|{work}\n"
    assert (work / ".outrider" / "slurm.exit").read_text() == "7\n"


def test_the_script_waits_for_a_stage_finishing_after_sigterm(tmp_path: Path) -> None:
    """``scancel --signal=TERM --full`` signals the script and the stage: the script must not
    end the job before the stage has saved its checkpoint and exited."""
    from outrider.localcluster import wait_for

    work = tmp_path / "w"
    (work / ".outrider").mkdir(parents=True)
    stage = 'trap "sleep 0.5; echo saved > saved; exit 5" TERM; touch ready; while :; do sleep 0.05; done'
    script = write_job_files(str(work), ["/bin/sh", "-c", stage], {})
    proc = subprocess.Popen(["/bin/sh", str(script)], cwd="/", start_new_session=True)
    try:
        wait_for(lambda: (work / "ready").exists(), 10, "the stage to start")
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, as --full does
        assert proc.wait(timeout=10) == 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (work / "saved").read_text() == "saved\n"
    assert (work / ".outrider" / "slurm.exit").read_text() == "5\n"


def test_an_env_name_a_shell_cannot_take_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".outrider").mkdir()
    with pytest.raises(ValueError, match="'A-B'"):
        write_job_files(str(tmp_path), ["true"], {"A-B": "1"})


# ----------------------------------------------------------------------- reading Slurm


def test_squeue_and_scontrol_are_read() -> None:
    jobs = parse_squeue("12|RUNNING|2026-11-30T03:25:42|None\n13|PENDING|N/A|Resources\n\n")
    assert jobs["12"].state == "RUNNING" and jobs["12"].start is not None
    assert jobs["13"].state == "PENDING" and jobs["13"].start is None and jobs["13"].reason == "Resources"
    line = (
        "JobId=12 JobName=outrider:r:t:1 JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
        "ExitCode=3:0 RunTime=00:00:02 StartTime=2026-11-30T03:25:42 EndTime=2026-11-30T03:25:44\n"
        "JobId=14 JobState=CANCELLED Reason=None ExitCode=0:15\n"
    )
    got = parse_scontrol_jobs(line)
    assert (got["12"].state, got["12"].exit_code, got["12"].signal) == ("FAILED", 3, 0)
    assert (got["14"].state, got["14"].signal) == ("CANCELLED", 15)


def test_sinfo_capacity_counts_usable_nodes_once() -> None:
    text = (
        "n1|32|128000|gpu:a100:4(S:0-1)|idle\n"
        "n2|32|128000|gpu:2|mixed\n"
        "n2|32|128000|gpu:2|mixed\n"  # (a node in two partitions is listed twice)
        "n3|64|256000|(null)|down*\n"
        "n4|16|64000|(null)|drain\n"
    )
    cap = parse_sinfo(text)
    assert (cap.nodes, cap.cpus, cap.memory_bytes, cap.gpus, cap.max_node_gpus) == (2, 64, 256000 << 20, 6, 4)
    caps = common_pb2.Capabilities(cpu_cores=4, memory_bytes=8 << 30, slots=4)
    advertise(caps, cap, 0)
    assert (caps.cpu_cores, caps.memory_bytes, caps.slots, len(caps.gpus)) == (64, 256000 << 20, 64, 4)
    advertise(caps, cap, 10)
    assert caps.slots == 10  # a configured cap


@pytest.mark.parametrize(
    ("state", "code", "sig", "outcome", "words"),
    [
        ("COMPLETED", 0, 0, None, ""),
        ("FAILED", 3, 0, Outcome.FAILED, "exit code 3 (Slurm job 9 FAILED)"),
        ("FAILED", 0, 9, Outcome.FAILED, "killed by signal 9"),
        ("TIMEOUT", 0, 0, Outcome.TIMEOUT, "timed out after 60s (Slurm job 9 TIMEOUT)"),
        ("OUT_OF_MEMORY", 0, 0, Outcome.FAILED, "OUT_OF_MEMORY: the job ran out of memory (--mem=64M)"),
        ("NODE_FAIL", 0, 0, Outcome.RELEASED, "NODE_FAIL: the job lost its node"),
        ("PREEMPTED", 0, 0, Outcome.RELEASED, "PREEMPTED: the job was preempted"),
        ("CANCELLED", 0, 15, Outcome.FAILED, "CANCELLED outside Outrider"),
    ],
)
def test_slurm_states_become_task_errors(state: str, code: int, sig: int, outcome: Outcome | None, words: str) -> None:
    got = verdict(JobState("9", state, code, sig), 60, False, "64M")
    if outcome is None:
        assert got is None
    else:
        assert got is not None and got[0] == outcome.value and words in got[1], got


# ----------------------------------------------------------------------- the executor, faked


class FakeSlurm:
    """Answers sbatch, squeue, scontrol and scancel from a table the test sets."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.sbatch: tuple[int, str, str] = (0, "41\n", "")
        self.queue: dict[str, str] = {}  # job id -> "STATE|START"
        self.ended: dict[str, str] = {}  # job id -> "STATE ExitCode"
        self.polled = asyncio.Event()
        self.on_sbatch: Callable[[], object] | None = None

    async def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[0] == "sbatch":
            if self.on_sbatch is not None:
                self.on_sbatch()
            return self.sbatch
        if argv[0] == "squeue":
            self.polled.set()
            return 0, "".join(f"{j}|{v}|None\n" for j, v in self.queue.items()), ""
        if argv[0] == "scontrol":
            lines = [f"JobId={j} JobState={v.split()[0]} ExitCode={v.split()[1]}" for j, v in self.ended.items()]
            return 0, "\n".join(lines), ""
        if argv[0] == "scancel":
            job = argv[-1]
            self.queue.pop(job, None)
            self.ended[job] = "CANCELLED 0:15"
            return 0, "", ""
        raise AssertionError(argv)


def _launch(ex: SlurmExecutor, work: Path, a: agent_pb2.Assignment) -> asyncio.Future[tuple[int, bool]]:
    (work / ".outrider").mkdir(parents=True, exist_ok=True)
    ex.expect("k", a)
    ex.launch("k", ["true"], {"TOKEN": "s3cret"}, str(work), "", "", 0.0, 10.0)
    return ex.exit_of("k")


async def _ended(fut: asyncio.Future[tuple[int, bool]]) -> tuple[int, bool]:
    return await asyncio.wait_for(fut, 5)


@in_loop
async def test_a_failed_job_ends_with_its_exit_code_and_state(tmp_path: Path) -> None:
    fake = FakeSlurm()
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    pids: list[int] = []
    ex.on_pid = lambda key, pid: pids.append(pid)
    fut = _launch(ex, tmp_path, _assignment())
    fake.queue["41"] = "RUNNING|N/A"
    await asyncio.wait_for(fake.polled.wait(), 5)
    assert pids == [41]  # into the lease record
    del fake.queue["41"]
    fake.ended["41"] = "FAILED 3:0"
    assert await _ended(fut) == (3, False)
    assert ex.verdict("k") == (Outcome.FAILED.value, "exit code 3 (Slurm job 41 FAILED)")
    assert not any("s3cret" in " ".join(c) for c in fake.calls)
    squeues = [c for c in fake.calls if c[0] == "squeue"]
    assert all("--me" in c for c in squeues)  # one call for all of the agent's jobs
    await ex.close()


@in_loop
async def test_a_job_slurm_forgot_ends_with_the_code_its_script_left_else_is_released(tmp_path: Path) -> None:
    fake = FakeSlurm()
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    # It ran and ended before the first poll, and slurmctld forgot it: neither squeue nor scontrol knows 41.
    fake.on_sbatch = lambda: (tmp_path / "a" / ".outrider" / "slurm.exit").write_text("0\n")
    fut = _launch(ex, tmp_path / "a", _assignment())
    assert await _ended(fut) == (0, False) and ex.verdict("k") is None
    ex.forget("k")
    fake.on_sbatch, fake.sbatch = None, (0, "42\n", "")
    fut = _launch(ex, tmp_path / "b", _assignment())
    await _ended(fut)
    end = ex.verdict("k")
    assert end is not None and end[0] == Outcome.RELEASED.value and "Slurm forgot it" in end[1], end
    await ex.close()


@in_loop
async def test_a_node_failure_releases_the_attempt(tmp_path: Path) -> None:
    fake = FakeSlurm()
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    fut = _launch(ex, tmp_path, _assignment())
    fake.ended["41"] = "NODE_FAIL 0:0"
    await _ended(fut)
    end = ex.verdict("k")
    assert end is not None and end[0] == Outcome.RELEASED.value and "NODE_FAIL" in end[1]
    await ex.close()


@in_loop
async def test_past_its_timeout_from_its_start_a_job_is_cancelled(tmp_path: Path) -> None:
    fake = FakeSlurm()
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    fut = _launch(ex, tmp_path, _assignment(timeout_s=5))
    fake.queue["41"] = "PENDING|N/A"  # queued for long: not counted
    fake.queue["7"] = "PENDING|N/A"  # another job of the same user: not this agent's
    await asyncio.wait_for(fake.polled.wait(), 5)
    assert not [c for c in fake.calls if c[0] == "scancel"]
    assert ex.queued == 1
    fake.queue["41"] = "RUNNING|2020-01-01T00:00:00"  # started long ago
    rc, _ = await _ended(fut)
    assert ["scancel", "41"] in fake.calls
    end = ex.verdict("k")
    assert rc == -signal.SIGKILL and end is not None and end[0] == Outcome.TIMEOUT.value, end
    assert "timed out after 5s" in end[1]
    assert ex.queued == 0
    await ex.close()


def test_a_change_in_queued_jobs_is_sent() -> None:
    from agent.probe import capabilities_changed

    last = common_pb2.Capabilities(slots=4)
    assert not capabilities_changed(last, common_pb2.Capabilities(slots=4))
    assert capabilities_changed(last, common_pb2.Capabilities(slots=4, queued_jobs=2))


@in_loop
async def test_kill_scancels_and_says_nothing_of_its_own(tmp_path: Path) -> None:
    fake = FakeSlurm()
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    fut = _launch(ex, tmp_path, _assignment())
    fake.queue["41"] = "RUNNING|N/A"
    await asyncio.wait_for(fake.polled.wait(), 5)
    ex.kill("k", signal.SIGTERM)  # running: SIGTERM first, so it can checkpoint
    ex.kill("k", signal.SIGKILL)
    await _ended(fut)
    assert ["scancel", "--signal=TERM", "--full", "41"] in fake.calls and ["scancel", "41"] in fake.calls
    assert ex.verdict("k") is None  # the runner's stop reason says why
    await ex.close()


@in_loop
async def test_sbatch_refusing_fails_the_task_and_an_absent_controller_is_the_agents_fault(tmp_path: Path) -> None:
    fake = FakeSlurm()
    fake.sbatch = (1, "", "sbatch: error: invalid partition specified: gpu\n")
    ex = SlurmExecutor(SETTINGS, run=fake, poll_s=0.01)
    assert (await _ended(_launch(ex, tmp_path, _assignment())))[0] == 1
    assert ex.verdict("k") == (
        Outcome.FAILED.value,
        "sbatch refused the job: sbatch: error: invalid partition specified: gpu",
    )
    ex.forget("k")
    fake.sbatch = (1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm controller\n")
    with pytest.raises(OSError, match="Slurm cannot be reached"):
        await _ended(_launch(ex, tmp_path, _assignment()))
    await ex.close()


# ----------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "test.ml")
    pki.issue(d, "agent", "hpc-1")
    return d


def _load(pki_dir: Path, *argv: str):  # type: ignore[no-untyped-def]
    from agent.main import load_config

    return load_config(["--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "hpc-1", *argv])


def test_slurm_keys_load_from_toml_and_flags(pki_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'executor = "slurm"\nslurm_partition = "gpu"\nslurm_account = "ml"\nslurm_work_dir = "shared"\n'
        'slurm_extra_args = ["--qos=low"]\n'
    )
    cfg = _load(pki_dir, "--config", str(toml))
    assert (cfg.executor, cfg.slurm_partition, cfg.slurm_account) == ("slurm", "gpu", "ml")
    assert cfg.slurm_work_dir == str(tmp_path / "shared") and cfg.slurm_extra_args == ["--qos=low"]
    cfg = _load(pki_dir, "--config", str(toml), "--slurm-extra-args", "--qos=high --exclusive")
    assert cfg.slurm_extra_args == ["--qos=high", "--exclusive"]
    assert _load(pki_dir).executor == "local"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--executor", "pbs"], 'executor must be "local" or "slurm"'),
        (["--executor", "slurm"], "needs slurm_partition and slurm_work_dir"),
        (["--executor", "slurm", "--slurm-partition", "p"], "needs slurm_work_dir"),
        (
            ["--executor", "slurm", "--slurm-partition", "p", "--slurm-work-dir", "/s", "--slurm-extra-args", "qos"],
            "slurm_extra_args must be a list of sbatch options",
        ),
    ],
)
def test_bad_slurm_settings_are_named(pki_dir: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(pki_dir, *argv)


def test_the_shared_work_dir_is_absolute(pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _load(pki_dir, "--executor", "slurm", "--slurm-partition", "p", "--slurm-work-dir", "rel")
    assert cfg.slurm_work_dir == os.path.join(str(tmp_path), "rel")


def test_a_restarted_agent_finds_its_jobs_by_the_lease_record_or_the_work_dir(tmp_path: Path) -> None:
    from agent.journal import LeaseRecord
    from agent.slurm import held_stages

    noted = tmp_path / "noted"
    (noted / ".outrider").mkdir(parents=True)
    (noted / ".outrider" / "slurm.job").write_text("77\n")  # sbatch answered after the record was written
    a = _assignment()
    records = {
        ("r", "recorded", 1): LeaseRecord(a, 100.0, 41, str(tmp_path / "w1")),
        ("r", "noted", 1): LeaseRecord(a, 100.0, 0, str(noted)),
        ("r", "never-submitted", 1): LeaseRecord(a, 100.0, 0, str(tmp_path / "w3")),
    }
    held = held_stages(records, {"wall": 110.0, "ttl": 15.0}, now_wall=112.0, now_mono=1000.0)
    assert {(h["key"], h["pid"]) for h in held} == {("r\trecorded\t1", 41), ("r\tnoted\t1", 77)}
    assert all(h["renewed"] == 998.0 and h["ttl"] == 15.0 for h in held)


def test_an_agent_that_cannot_read_its_partition_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.slurm as slurm_mod
    from tests.helpers.agents import make_agent

    def no_sinfo(partition: str) -> None:
        raise OSError("cannot run sinfo: [Errno 2] No such file or directory: 'sinfo'")

    monkeypatch.setattr(slurm_mod, "probe_partition", no_sinfo)
    with pytest.raises(ConfigError, match="executor = slurm: cannot run sinfo"):
        make_agent(
            tmp_path, monkeypatch, executor="slurm", slurm_partition="gpu", slurm_work_dir=str(tmp_path / "shared")
        )


def test_an_agent_on_slurm_advertises_the_partition_and_uses_the_shared_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.slurm as slurm_mod
    from agent.slurmcmd import Capacity
    from tests.helpers.agents import make_agent

    monkeypatch.setattr(slurm_mod, "probe_partition", lambda partition: Capacity(4, 256, 1 << 40, 8, 2))
    shared = tmp_path / "shared"
    a = make_agent(tmp_path, monkeypatch, executor="slurm", slurm_partition="gpu", slurm_work_dir=str(shared))
    try:
        caps = a.session.base_caps
        assert (caps.cpu_cores, caps.memory_bytes, len(caps.gpus), caps.slots) == (256, 1 << 40, 2, 1)
        assert a.work_root == shared and a.runner.keeper is a.slurm
    finally:
        a.lock.release()


def test_a_partition_read_again_changes_what_is_advertised_only_when_it_changed() -> None:
    from agent.slurmcmd import Capacity, refresh_capacity

    caps = common_pb2.Capabilities(labels={"site": "hpc"})
    assert refresh_capacity(caps, Capacity(2, 64, 2 * 2**37, 4, 2), 0)  # first read
    assert (caps.cpu_cores, caps.slots, len(caps.gpus), caps.labels["site"]) == (64, 64, 2, "hpc")
    assert not refresh_capacity(caps, Capacity(2, 64, 2 * 2**37, 4, 2), 0)  # the same: nothing to send
    assert refresh_capacity(caps, Capacity(1, 32, 2**37, 2, 2), 0)  # a node drained
    assert (caps.cpu_cores, caps.memory_bytes, caps.slots) == (32, 2**37, 32)
    assert refresh_capacity(caps, Capacity(1, 32, 2**37, 2, 2), 8) and caps.slots == 8  # a configured cap
