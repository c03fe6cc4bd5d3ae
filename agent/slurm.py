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
- ``sinfo`` gives the partition's capacity (:func:`partition_capacity`), read at start and
  again every :data:`CAPACITY_REFRESH_S` (the agent advertises it in place of the login node's).

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
(:mod:`agent.journal`; also in ``.outrider/slurm.job``, for a record written before
``sbatch`` answered), and the next agent process re-attaches to it
(:meth:`SlurmExecutor.take_over`); a job whose lease lapsed meanwhile is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.slurmcmd import (
    TERMINAL,
    Capacity,
    Commands,
    JobState,
    SlurmSettings,
    advertise,
    parse_scontrol_jobs,
    parse_squeue,
    partition_capacity,
    probe_partition,
    refresh_capacity,
    run_command,
    sbatch_args,
    verdict,
    write_job_files,
)
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2

__all__ = [
    "CAPACITY_REFRESH_S",
    "POLL_S",
    "Capacity",
    "SlurmExecutor",
    "SlurmSettings",
    "advertise",
    "held_stages",
    "partition_capacity",
    "probe_partition",
    "refresh_capacity",
]

log = logging.getLogger(__name__)

#: How often the agent's jobs are looked at (one ``squeue`` call for all of them).
POLL_S = 1.0

#: How often the partition's capacity is read again (``sinfo``): nodes drained, down or added.
CAPACITY_REFRESH_S = 60.0
#: The job's id, in its work dir's ``.outrider``.
JOB_FILE = "slurm.job"


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
        try:  # (and beside the job: for a lease record written before sbatch answered)
            (Path(job.work) / ".outrider" / JOB_FILE).write_text(job.job_id + "\n")
        except OSError as exc:
            log.warning("cannot note Slurm job %s in its work dir: %s", job.job_id, exc)
        if job.stopping:
            await self._scancel(["scancel", job.job_id])
        self._ensure_poller()

    async def _scancel(self, argv: list[str]) -> None:
        try:
            rc, _, err = await self.run(argv)
            if rc != 0:  # (a job that already ended: "Invalid job id specified")
                level = logging.DEBUG if "invalid job id" in err.lower() else logging.WARNING
                log.log(level, "%s failed (exit %d): %s", " ".join(argv), rc, err.strip()[:300])
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
        self.queued = 0

    async def poll(self) -> None:
        """One look at all of this agent's jobs: states, timeouts, ends."""
        live = {j.job_id: j for j in self._jobs.values() if j.job_id and not j.exited.done()}
        if not live:
            return
        rc, out, err = await self.run(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%S|%r"])
        if rc != 0:
            raise OSError(f"squeue failed (exit {rc}): {err.strip()[:300]}")
        seen = parse_squeue(out)
        self.queued = sum(1 for j in live if j in seen and seen[j].state == "PENDING")  # (ours only)
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
            await self._read_ends(ended, seen)

    async def _read_ends(self, ended: list[_Job], seen: dict[str, JobState]) -> None:
        rc, out, err = await self.run(["scontrol", "-o", "show", "job"])
        if rc != 0:  # (the poll loop looks again)
            raise OSError(f"scontrol show job failed (exit {rc}): {err.strip()[:300]}")
        known = parse_scontrol_jobs(out)
        for job in ended:
            s = known.get(job.job_id)
            if s is not None and s.state not in TERMINAL:
                continue  # (squeue and scontrol disagree for a moment: next poll)
            if s is None:  # slurmctld forgot it (MinJobAge): the code its script left, if any
                queued = seen.get(job.job_id)
                s = JobState(job.job_id, queued.state if queued else "COMPLETED", self._exit_file(job))
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


def held_stages(
    records: dict[Any, Any], renewed: dict[str, float], now_wall: float, now_mono: float
) -> list[dict[str, Any]]:
    """The Slurm jobs the lease records name (their ``pid`` is the job id), in the form
    :func:`agent.recovery.plan` takes a keeper's stages: each one is re-attached while its
    lease holds (the job itself says, once followed, whether it still runs)."""
    from agent.stage import key_text

    out: list[dict[str, Any]] = []
    for key, rec in records.items():
        if not rec.workdir:
            continue
        job = rec.pid or _job_noted(rec.workdir)
        if job <= 0:
            continue  # (never submitted: it is resumed)
        last_wall = max(rec.started, renewed.get("wall", 0.0))
        out.append(
            {
                "key": key_text(key),
                "pid": job,
                "renewed": now_mono - (now_wall - last_wall),
                "ttl": renewed.get("ttl") or 0.0,
                "expired": False,
                "code": None,
                "stopped": False,
            }
        )
    return out


def _job_noted(workdir: str) -> int:
    try:
        text = (Path(workdir) / ".outrider" / JOB_FILE).read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
