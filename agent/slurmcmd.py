"""Slurm's commands, built and read: the job script and ``sbatch`` line for a stage, what
``squeue``, ``scontrol show job`` and ``sinfo`` print, and how a job's end reads as a
task's (:func:`verdict`). Pure but for :func:`run_command`, :func:`write_job_files` and
the ``sinfo`` probes; :mod:`agent.slurm` (the executor) is the one user.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from outrider.protocol import Outcome
from outrider.v1 import common_pb2

__all__ = [
    "COMMAND_TIMEOUT_S",
    "RELEASED_STATES",
    "TERMINAL",
    "Capacity",
    "Commands",
    "JobState",
    "SlurmSettings",
    "advertise",
    "batch_script",
    "parse_scontrol_jobs",
    "parse_sinfo",
    "parse_squeue",
    "partition_capacity",
    "probe_partition",
    "refresh_capacity",
    "run_command",
    "sbatch_args",
    "time_limit",
    "verdict",
    "write_job_files",
]

#: How long one Slurm command may take before it counts as failed.
COMMAND_TIMEOUT_S = 30.0
#: Slurm states after which a job no longer runs.
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "CANCELLED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
#: States whose attempt is released (the machine's fault, not the task's): it reruns from its checkpoint.
RELEASED_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})

#: (argv, stdin) -> (exit status, stdout, stderr); OSError if the command cannot run.
Commands = Callable[[list[str]], Awaitable[tuple[int, str, str]]]


async def run_command(argv: list[str]) -> tuple[int, str, str]:
    """Run one Slurm command, bounded by :data:`COMMAND_TIMEOUT_S`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g}s") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass(frozen=True)
class SlurmSettings:
    """The agent's Slurm keys (``slurm_*`` in its config)."""

    partition: str
    account: str = ""
    work_dir: str = ""
    extra_args: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- the job script


def sbatch_args(settings: SlurmSettings, lease: common_pb2.LeaseRef, spec: common_pb2.TaskSpec, work: str) -> list[str]:
    """The ``sbatch`` command line for one stage (the script is ``WORK/.outrider/slurm.sh``)."""
    req = spec.requires
    o = work + "/.outrider/"
    args = [
        "sbatch",
        "--parsable",
        f"--job-name=outrider:{lease.run_id}:{lease.task}:{lease.epoch}",
        f"--partition={settings.partition}",
        f"--chdir={work}",
        f"--output={o}stdout",
        f"--error={o}stderr",
        "--open-mode=append",
        "--no-requeue",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, math.ceil(req.cpus or 1))}",
    ]
    if settings.account:
        args.append(f"--account={settings.account}")
    if req.memory_bytes > 0:
        args.append(f"--mem={max(1, math.ceil(req.memory_bytes / (1 << 20)))}M")
    if req.gpus > 0:
        args.append(f"--gres=gpu:{req.gpus}")
    if spec.timeout_s > 0:
        args.append(f"--time={time_limit(spec.timeout_s)}")
    args.extend(settings.extra_args)
    args.append(o + "slurm.sh")
    return args


def time_limit(timeout_s: float) -> str:
    """``--time`` for a timeout: whole minutes, rounded up (Slurm keeps limits in minutes),
    plus one, so the agent's own timeout (to the second) comes first and says so."""
    return str(math.ceil(timeout_s / 60) + 1)


def batch_script(argv: list[str], work: str) -> str:
    """The batch script: the environment from the 0600 file, the command, its exit code kept.

    The shell outlives a SIGTERM (``scancel --signal=TERM --full`` signals every process of
    the job): it waits for the stage, which may take its time to checkpoint, since the job
    ends (and Slurm kills what is left of it) when the script does. The stage itself gets
    the signal with its default disposition (a trap with a command is not inherited).
    """
    o = shlex.quote(work + "/.outrider/")
    cmd = " ".join(shlex.quote(a) for a in argv)
    return (
        "#!/bin/sh\n"
        "# Written by the Outrider agent: one stage attempt as a Slurm job.\n"
        f"set -a; . {o}slurm.env; set +a\n"
        f"cd {shlex.quote(work)} || exit 1\n"
        "trap : TERM\n"
        f"{cmd} &\n"
        "pid=$!\n"
        'while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done\n'
        f'echo "$rc" > {o}slurm.exit.tmp && mv {o}slurm.exit.tmp {o}slurm.exit\n'
        'exit "$rc"\n'
    )


def write_job_files(work: str, argv: list[str], env: dict[str, str]) -> Path:
    """Write ``slurm.env`` (0600) and ``slurm.sh`` (0700) into the work dir; the script's path."""
    o = Path(work) / ".outrider"
    (o / "slurm.exit").unlink(missing_ok=True)  # (never a previous job's code)
    env_path = o / "slurm.env"
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for k, v in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"environment variable name {k!r} cannot be passed to a Slurm job")
            f.write(f"{k}={shlex.quote(v)}\n")
    script = o / "slurm.sh"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(batch_script(argv, work))
    return script


# ---------------------------------------------------------------------------- reading Slurm


@dataclass(frozen=True)
class JobState:
    """One job as Slurm reports it."""

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int = 0
    reason: str = ""
    #: Wall time it started running; None while pending.
    start: float | None = None


def _parse_time(text: str) -> float | None:
    if not text or text in ("N/A", "Unknown", "None"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_squeue(text: str) -> dict[str, JobState]:
    """``squeue --noheader --format=%i|%T|%S|%r`` → job id → state."""
    jobs: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job, state, start, reason = parts[0], parts[1].upper(), parts[2], "|".join(parts[3:])
        running = state not in ("PENDING", "CONFIGURING")
        jobs[job] = JobState(job, state, reason=reason, start=_parse_time(start) if running else None)
    return jobs


_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_scontrol_jobs(text: str) -> dict[str, JobState]:
    """``scontrol -o show job`` (one line per job) → job id → state with its exit code."""
    jobs: dict[str, JobState] = {}
    for line in text.splitlines():
        f = dict(_FIELD.findall(line))
        job = f.get("JobId")
        if not job:
            continue
        code, sig = None, 0
        m = re.fullmatch(r"(\d+):(\d+)", f.get("ExitCode", ""))
        if m:
            code, sig = int(m.group(1)), int(m.group(2))
        state = f.get("JobState", "UNKNOWN").upper()
        jobs[job] = JobState(job, state, code, sig, f.get("Reason", ""), _parse_time(f.get("StartTime", "")))
    return jobs


def verdict(job: JobState, timeout_s: float, timed_out: bool, mem: str = "") -> tuple[str, str] | None:
    """How a job's end reads as a task's end: (outcome, error), or None when it completed
    with exit 0 (the runner then publishes its outputs)."""
    j = f"Slurm job {job.job_id}"
    st = job.state
    if timed_out or st in ("TIMEOUT", "DEADLINE"):
        how = "TIMEOUT" if st == "TIMEOUT" else "cancelled"
        return Outcome.TIMEOUT.value, f"timed out after {timeout_s:g}s ({j} {how})"
    if st in RELEASED_STATES:
        what = "was preempted" if st == "PREEMPTED" else "lost its node"
        return Outcome.RELEASED.value, f"{j} {st}: the job {what}; it runs again from its newest checkpoint"
    if st == "OUT_OF_MEMORY":
        return Outcome.FAILED.value, f"{j} OUT_OF_MEMORY: the job ran out of memory{f' (--mem={mem})' if mem else ''}"
    if st == "CANCELLED":
        return Outcome.FAILED.value, f"{j} CANCELLED outside Outrider (scancel by a user or an administrator)"
    if st == "COMPLETED" and not job.exit_code and not job.signal:
        return None
    if job.signal:
        return Outcome.FAILED.value, f"killed by signal {job.signal} ({j} {st})"
    if job.exit_code is None:
        return Outcome.FAILED.value, f"{j} ended ({st}) and its exit code is unknown"
    return Outcome.FAILED.value, f"exit code {job.exit_code} ({j} {st})"


@dataclass(frozen=True)
class Capacity:
    """What a partition offers (the nodes that can take jobs)."""

    nodes: int
    cpus: int
    memory_bytes: int
    gpus: int
    #: GPUs of its biggest node (a job runs on one node).
    max_node_gpus: int = 0


_GPU = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")
_UNUSABLE = ("down", "drain", "fail", "maint", "unk", "not_responding", "reboot", "futr", "power_down")


def parse_sinfo(text: str) -> Capacity:
    """``sinfo --noheader --Node --format=%N|%c|%m|%G|%t`` → the partition's capacity
    (nodes down, drained or failing count for nothing; a node listed twice once)."""
    seen: set[str] = set()
    nodes = cpus = mem = gpus = max_gpus = 0
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5 or parts[0] in seen:
            continue
        name, c, m, gres, state = parts[:5]
        if any(u in state.lower() for u in _UNUSABLE):
            continue
        seen.add(name)
        nodes += 1
        cpus += int(c) if c.isdigit() else 0
        mem += (int(m) << 20) if m.isdigit() else 0
        g = sum(int(x) for x in _GPU.findall(gres))
        gpus += g
        max_gpus = max(max_gpus, g)
    return Capacity(nodes, cpus, mem, gpus, max_gpus)


async def partition_capacity(partition: str, run: Commands = run_command) -> Capacity:
    """The partition's capacity from ``sinfo``; OSError naming the problem if Slurm cannot say."""
    argv = ["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%c|%m|%G|%t"]
    rc, out, err = await run(argv)
    if rc != 0:
        raise OSError(f"sinfo failed (exit {rc}): {err.strip()[:300]}")
    cap = parse_sinfo(out)
    if cap.nodes == 0:
        raise OSError(f"Slurm partition {partition!r} has no node that can take jobs (sinfo lists none up)")
    return cap


# ---------------------------------------------------------------------------- the agent's start


def probe_partition(partition: str) -> Capacity:
    """:func:`partition_capacity`, blocking (the agent's start-up probe)."""
    import subprocess

    argv = ["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%c|%m|%G|%t"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"cannot run sinfo: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"sinfo failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    cap = parse_sinfo(done.stdout)
    if cap.nodes == 0:
        raise OSError(f"Slurm partition {partition!r} has no node that can take jobs (sinfo lists none up)")
    return cap


def refresh_capacity(caps: common_pb2.Capabilities, cap: Capacity, slots: int) -> bool:
    """:func:`advertise` a capacity read again; whether what is advertised changed."""
    before = caps.SerializeToString(deterministic=True)
    advertise(caps, cap, slots)
    return caps.SerializeToString(deterministic=True) != before


def advertise(caps: common_pb2.Capabilities, cap: Capacity, slots: int) -> None:
    """The partition's capacity in place of the login node's: CPUs, memory, GPUs (one
    entry per GPU of the biggest node: a job runs on one node), slots (a configured cap,
    else one per CPU of the partition)."""
    caps.cpu_cores = cap.cpus
    caps.memory_bytes = cap.memory_bytes
    del caps.gpus[:]
    caps.gpus.extend(common_pb2.Gpu(index=i, model="slurm-gres") for i in range(cap.max_node_gpus))
    caps.gpu_probe = f"slurm: {cap.gpus} GPU(s) in the partition (gres)" if cap.gpus else "slurm: no gpu gres"
    caps.slots = slots or cap.cpus
