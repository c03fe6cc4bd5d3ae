"""The Slurm executor: an agent on a login node runs its stages as Slurm jobs.

With ``executor = "slurm"`` the runner (:mod:`agent.runner`) hands each stage to a
:class:`SlurmExecutor` instead of the local keeper; everything around the process stays
the same (work dir, inputs, outputs, checkpoints, logs), because the work dirs live in
``slurm_work_dir``, a directory the login node and the compute nodes share.

Slurm's own commands are the interface (nothing here re-implements what Slurm does):

- ``sbatch --parsable`` submits ``.outrider/slurm.sh`` from the work dir: it sources the
  stage's environment from ``.outrider/slurm.env`` (mode 0600: ``secret_env`` is never on a
  command line), runs the stage's argv with the work dir as its cwd, and writes its exit
  code to ``.outrider/slurm.exit``; stdout and stderr go to ``.outrider/stdout`` and
  ``.outrider/stderr``, which :mod:`agent.logtail` forwards as they grow. The task's
  ``requires`` become ``--cpus-per-task``, ``--mem``, ``--gres=gpu:N``; its ``timeout``
  ``--time`` (whole minutes, rounded up: Slurm's unit), ``--job-name`` names run, task and
  attempt, ``--no-requeue`` leaves a rerun to the scheduler.
- ``squeue --me --states=all`` (one call for all of the agent's jobs, every
  :data:`POLL_S`) follows them; a job that ended is read with ``scontrol show job``
  (its state and exit code). ``sacct`` is not used: it needs ``slurmdbd``, which many
  clusters and the test harness do not run; a job slurmctld has already forgotten ends
  with the code its script wrote, else as lost.
- ``scancel`` stops a job: a cancel, a lost lease, a drain (``--signal=TERM --full`` first,
  so the stage can checkpoint; a plain ``scancel`` after the grace), and a timeout: the
  executor counts ``timeout`` from the job's start (queue time is not run time) and
  cancels it then, to the second, before Slurm's minute-granular ``--time`` would.
- ``sinfo`` gives the partition's capacity (:func:`partition_capacity`).

How a job's end becomes a task's (:func:`verdict`)::

    COMPLETED, exit 0 ─────────────────────────────▶ the runner publishes outputs (succeeded)
    FAILED, exit N ────────────────────────────────▶ failed: "exit code N (Slurm job J FAILED)"
    TIMEOUT, or cancelled here past its timeout ───▶ timeout
    OUT_OF_MEMORY ─────────────────────────────────▶ failed: the job ran out of its --mem
    CANCELLED (not by this agent) ─────────────────▶ failed: cancelled outside Outrider
    NODE_FAIL, PREEMPTED, BOOT_FAIL ───────────────▶ released (no retry spent): it runs again
                                                     and resumes from its newest checkpoint
    sbatch refuses the request ────────────────────▶ failed, with sbatch's reason
    sbatch or slurmctld cannot be reached ─────────▶ agent failure (released, agent unhealthy)

A job survives an agent restart: its id is the stage's ``pid`` in the lease record
(:mod:`agent.journal`), and the next agent process re-attaches to it (:meth:`adopt`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2

__all__ = [
    "POLL_S",
    "Capacity",
    "JobState",
    "SlurmExecutor",
    "SlurmSettings",
    "batch_script",
    "parse_scontrol_jobs",
    "parse_sinfo",
    "parse_squeue",
    "partition_capacity",
    "run_command",
    "sbatch_args",
    "verdict",
]

log = logging.getLogger(__name__)

#: How often the agent's jobs are looked at (one ``squeue`` call for all of them).
POLL_S = 1.0
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
    """The batch script: the environment from the 0600 file, the command, its exit code kept."""
    o = shlex.quote(work + "/.outrider/")
    cmd = " ".join(shlex.quote(a) for a in argv)
    return (
        "#!/bin/sh\n"
        "# Written by the Outrider agent: one stage attempt as a Slurm job.\n"
        f"set -a; . {o}slurm.env; set +a\n"
        f"cd {shlex.quote(work)} || exit 1\n"
        f"{cmd}\n"
        "rc=$?\n"
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


# ---------------------------------------------------------------------------- the executor


@dataclass(eq=False)
class _Job:
    key: str
    timeout_s: float
    mem: str
    exited: asyncio.Future[tuple[int, bool]]
    work: str = ""
    job_id: str = ""
    state: str = "SUBMITTING"
    start: float | None = None
    #: Cancelled here: its timeout passed, or the agent stopped it.
    timed_out: bool = False
    stopping: bool = False
    end: tuple[str, str] | None = None
    submit: asyncio.Task[None] | None = field(default=None, repr=False)


class SlurmExecutor:
    """Runs stages as Slurm jobs; the runner's side of it reads as the keeper's
    (:class:`agent.keeper_client.KeeperClient`): ``launch``, ``exit_of``, ``kill``, ``forget``.

    Args:
        settings: partition, account, shared work dir, extra ``sbatch`` arguments.
        run: how a command runs (a fake in unit tests).
        poll_s: how often the jobs are looked at.
    """

    #: The executor counts timeouts itself, from each job's start (the runner does not).
    owns_timeouts = True

    def __init__(self, settings: SlurmSettings, run: Commands = run_command, poll_s: float = POLL_S) -> None:
        self.settings = settings
        self.run = run
        self.poll_s = poll_s
        self.on_pid: Callable[[str, int], None] | None = None
        self._jobs: dict[str, _Job] = {}
        self._assignments: dict[str, agent_pb2.Assignment] = {}
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        #: Jobs of this agent Slurm holds pending (the last poll's count).
        self.queued = 0

    # -- the keeper's surface ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return True

    async def connect(self, start: bool = True) -> list[dict[str, Any]]:
        return []

    def expect(self, key: str, assignment: agent_pb2.Assignment) -> None:
        """The assignment of the stage :meth:`launch` is about to start (its requires, timeout)."""
        self._assignments[key] = assignment

    def launch(
        self,
        key: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stdout: str,
        stderr: str,
        renewed: float,
        ttl: float,
    ) -> None:
        """Submit the stage as a job (in the background: a failure comes back through its exit)."""
        a = self._assignments.pop(key)
        job = self._new(key, a)
        job.work = cwd
        job.submit = asyncio.ensure_future(self._submit(job, a, argv, env))

    def adopt(self, key: str, job_id: str, assignment: agent_pb2.Assignment, work: str) -> None:
        """Follow a job a previous agent process submitted (its id from the lease record)."""
        job = self._new(key, assignment)
        job.job_id, job.work, job.state = job_id, work, "UNKNOWN"
        self._ensure_poller()

    def take_over(self, plan: Any, records: dict[Any, Any]) -> None:
        """A previous agent process's jobs (:mod:`agent.recovery`'s plan): each one whose
        lease holds is followed again by its id; the others are cancelled."""
        from agent.stage import parse_key_text

        for stage in plan.reattach:
            self.adopt(stage.key_text, str(stage.pid), stage.assignment, str(stage.workdir))
            log.info("re-attached to Slurm job %d (%s)", stage.pid, stage.key_text.replace("\t", "/"))
        for text in plan.kill:
            rec = records.get(parse_key_text(text))
            if rec is not None and rec.pid > 0:
                log.info("cancelling Slurm job %d: its lease lapsed while the agent was away", rec.pid)
                self._background(self._scancel(["scancel", str(rec.pid)]))

    def exit_of(self, key: str) -> asyncio.Future[tuple[int, bool]]:
        return self._jobs[key].exited

    def renew(self, keys: Iterable[str], renewed: float, ttl: float) -> None:
        """Nothing to do: the agent itself stops a job whose lease lapsed (its watchdog)."""

    def kill(self, key: str, sig: int) -> None:
        """``scancel``: SIGTERM signals the running job's processes (so it can checkpoint),
        SIGKILL (or a job not yet running) cancels it."""
        job = self._jobs.get(key)
        if job is None or job.exited.done():
            return
        job.stopping = True
        if not job.job_id:  # still being submitted: cancelled as soon as it has an id
            return
        soft = sig == signal.SIGTERM and job.state == "RUNNING"
        argv = ["scancel", "--signal=TERM", "--full", job.job_id] if soft else ["scancel", job.job_id]
        self._background(self._scancel(argv))

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: str) -> None:
        job = self._jobs.pop(key, None)
        if job is not None and job.submit is not None:
            job.submit.cancel()

    def verdict(self, key: str) -> tuple[str, str] | None:
        """How the job ended, as the task's outcome and error (:func:`verdict`); None: exit 0."""
        job = self._jobs.get(key)
        return job.end if job is not None else None

    async def close(self) -> None:
        """Stop following the jobs (they run on in Slurm; the next agent process re-attaches)."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    # -- inside ----------------------------------------------------------------------------

    def _new(self, key: str, a: agent_pb2.Assignment) -> _Job:
        mem = a.spec.requires.memory_bytes
        mem_text = f"{math.ceil(mem / (1 << 20))}M" if mem > 0 else ""
        job = _Job(key, a.spec.timeout_s, mem_text, asyncio.get_running_loop().create_future())
        self._jobs[key] = job
        return job

    async def _submit(self, job: _Job, a: agent_pb2.Assignment, argv: list[str], env: dict[str, str]) -> None:
        try:
            await asyncio.to_thread(write_job_files, job.work, argv, env)
            rc, out, err = await self.run(sbatch_args(self.settings, a.lease, a.spec, job.work))
        except ValueError as exc:  # the task's environment cannot be written down
            self._end(job, 1, (Outcome.FAILED.value, f"cannot submit to Slurm: {exc}"))
            return
        except OSError as exc:  # no sbatch, no disk: the agent's fault (the runner says so)
            if not job.exited.done():
                job.exited.set_exception(OSError(f"cannot submit to Slurm: {exc}"))
            return
        if rc != 0:
            text = err.strip()[:500] or f"exit {rc}"
            if _unreachable(text):
                if not job.exited.done():
                    job.exited.set_exception(OSError(f"Slurm cannot be reached: {text}"))
                return
            self._end(job, 1, (Outcome.FAILED.value, f"sbatch refused the job: {text}"))
            return
        job.job_id = out.strip().split(";")[0]
        job.state = "PENDING"
        log.info("stage %s is Slurm job %s", job.key.replace("\t", "/"), job.job_id)
        if self.on_pid is not None and job.job_id.isdigit():
            self.on_pid(job.key, int(job.job_id))  # into the lease record: a restarted agent re-attaches
        if job.stopping:
            await self._scancel(["scancel", job.job_id])
        self._ensure_poller()

    async def _scancel(self, argv: list[str]) -> None:
        try:
            rc, _, err = await self.run(argv)
            if rc != 0:
                log.warning("%s failed (exit %d): %s", " ".join(argv), rc, err.strip()[:300])
        except OSError as exc:
            log.warning("%s failed: %s", " ".join(argv), exc)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        while any(j.job_id and not j.exited.done() for j in self._jobs.values()):
            try:
                await self.poll()
            except OSError as exc:  # slurmctld away for a while: the jobs run on; look again
                log.warning("cannot read the Slurm queue: %s", exc)
            await asyncio.sleep(self.poll_s)
        self._poller = None

    async def poll(self) -> None:
        """One look at all of this agent's jobs: states, timeouts, ends."""
        live = {j.job_id: j for j in self._jobs.values() if j.job_id and not j.exited.done()}
        if not live:
            return
        rc, out, err = await self.run(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%S|%r"])
        if rc != 0:
            raise OSError(f"squeue failed (exit {rc}): {err.strip()[:300]}")
        seen = parse_squeue(out)
        self.queued = sum(1 for s in seen.values() if s.state == "PENDING")
        ended: list[_Job] = []
        now = time.time()
        for job_id, job in live.items():
            s = seen.get(job_id)
            if s is None or s.state in TERMINAL:
                ended.append(job)
                continue
            job.state = s.state
            job.start = s.start or job.start
            if job.timeout_s > 0 and job.start is not None and now - job.start > job.timeout_s and not job.timed_out:
                job.timed_out = True
                log.info("Slurm job %s ran past its timeout (%gs): cancelling it", job_id, job.timeout_s)
                await self._scancel(["scancel", job_id])
        if ended:
            await self._read_ends(ended)

    async def _read_ends(self, ended: list[_Job]) -> None:
        rc, out, _ = await self.run(["scontrol", "-o", "show", "job"])
        known = parse_scontrol_jobs(out) if rc == 0 else {}
        for job in ended:
            s = known.get(job.job_id)
            if s is None or s.state not in TERMINAL:
                if s is not None:  # (squeue and scontrol disagree for a moment: next poll)
                    continue
                s = JobState(job.job_id, "COMPLETED", self._exit_file(job))  # slurmctld forgot it
                if s.exit_code is None:
                    s = JobState(job.job_id, "LOST")
            code = s.exit_code if s.exit_code is not None else 1
            rc_out = -s.signal if s.signal else code
            end = verdict(s, job.timeout_s, job.timed_out, job.mem)
            if s.state == "LOST":
                end = (Outcome.RELEASED.value, f"Slurm job {job.job_id}: Slurm forgot it; no exit code was left")
            if job.stopping and not job.timed_out:
                end = None  # the agent stopped it: the runner's stop reason says why
            self._end(job, rc_out if end is None or end[0] != Outcome.TIMEOUT.value else -signal.SIGKILL, end)

    def _exit_file(self, job: _Job) -> int | None:
        try:
            return int((Path(job.work) / ".outrider" / "slurm.exit").read_text().strip())
        except (OSError, ValueError):
            return None

    def _end(self, job: _Job, rc: int, end: tuple[str, str] | None) -> None:
        job.end = end
        job.state = "ENDED"
        if not job.exited.done():
            job.exited.set_result((rc, False))


def _unreachable(text: str) -> bool:
    t = text.lower()
    return "unable to contact slurm controller" in t or "connection refused" in t or "socket timed out" in t


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


def held_stages(
    records: dict[Any, Any], renewed: dict[str, float], now_wall: float, now_mono: float
) -> list[dict[str, Any]]:
    """The Slurm jobs the lease records name (their ``pid`` is the job id), in the form
    :func:`agent.recovery.plan` takes a keeper's stages: each one is re-attached while its
    lease holds (the job itself says, once followed, whether it still runs)."""
    from agent.stage import key_text

    out: list[dict[str, Any]] = []
    for key, rec in records.items():
        if rec.pid <= 0 or not rec.workdir:
            continue
        last_wall = max(rec.started, renewed.get("wall", 0.0))
        out.append(
            {
                "key": key_text(key),
                "pid": rec.pid,
                "renewed": now_mono - (now_wall - last_wall),
                "ttl": renewed.get("ttl") or 0.0,
                "expired": False,
                "code": None,
                "stopped": False,
            }
        )
    return out
