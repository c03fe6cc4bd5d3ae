"""Runs one stage: work dir, inputs, a process group started by the keeper, outputs.

A stage gets a fresh work dir holding a copy of the pipeline's code bundle and
this environment: ``OUTRIDER_INPUTS`` (each declared input under its name),
``OUTRIDER_OUTPUTS`` (where it writes each declared output),
``OUTRIDER_CHECKPOINT_DIR`` (where it saves checkpoints: :mod:`outrider.checkpoint`),
``OUTRIDER_METRICS_FILE`` (where it records figures: :mod:`outrider.metrics`),
``OUTRIDER_PIPELINE``, ``OUTRIDER_RUN_ID``, ``OUTRIDER_TASK``, ``OUTRIDER_ATTEMPT`` (1-based),
``TRACEPARENT`` (W3C trace context), plus the task's own ``env`` and ``secret_env``.

The stage is started by the agent's keeper (:mod:`agent.keeper`) in a new session (its
own process group), so a timeout, a cancel or a lost lease kills the stage *and every
child it started*: SIGTERM to the group, then SIGKILL after a grace period. Its output
goes to files in its work dir that the agent forwards (:mod:`agent.logtail`): no pipe
ties it to the agent process, so it survives an agent restart within its lease and the
next agent process takes it over (:meth:`Runner.reattach`).

How an attempt ends, as the runner reports it::

    exit 0, every output published ─────────────────────▶ succeeded
    exit ≠ 0, or a declared output missing ─────────────▶ failed (a retry is spent)
    an output is or holds a symlink out of the outputs
    dir (or dangling, or a cycle) ──────────────────────▶ failed
    past its timeout ───────────────────────────────────▶ timeout
    stopped by the agent (cancel, lease lost, ...) ─────▶ cancelled (not reported)
    drained (asked to checkpoint and stop) ─────────────▶ released (no retry spent),
                                                          or succeeded if it finished
    the agent's own failure (:class:`AgentFault`) ──────▶ released, and the agent is
                                                          unhealthy until its self-check passes
    the scheduler unreachable for a lease TTL ──────────▶ released
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from agent import stagemetrics
from agent.keeper_client import KeeperClient, KeeperLost
from agent.logtail import LogSink, LogTail
from agent.slurm import SlurmExecutor
from agent.stage import AgentFault, Stage, StopReason
from agent.stageuser import StageUser, hand_over
from agent.workdirs import WorkdirPool
from outrider import logfmt, metrics
from outrider.errors import InvalidArgument
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2

__all__ = ["LOG_POLL_S", "Runner", "StageHooks", "reap_orphans"]

log = logging.getLogger(__name__)

#: How often the output of running stages is forwarded.
LOG_POLL_S = 0.2
#: Why an exec fails when the *command* is wrong (the task's fault, as a shell says 127/126).
_EXEC_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL}
)
#: Errors of the agent's own machine while writing outputs (not the task's fault).
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE})

Fetch = Callable[[common_pb2.ArtifactRef, Path], Awaitable[None]]
Publish = Callable[[str, Path], Awaitable[common_pb2.ArtifactRef]]


class StageHooks(Protocol):
    """What happens around a stage's process (checkpoints: :class:`agent.checkpoints.Checkpoints`)."""

    async def before_start(self, stage: Stage, checkpoint_dir: Path) -> None:
        """Before the process starts: restore the checkpoint it resumes from."""
        ...

    def started(self, stage: Stage, checkpoint_dir: Path) -> None:
        """The process runs (or was taken over): watch its checkpoints."""
        ...

    async def ended(self, stage: Stage, checkpoint_dir: Path) -> None:
        """The process ended: keep its last checkpoint before the work dir goes."""
        ...


class _NoHooks:
    async def before_start(self, stage: Stage, checkpoint_dir: Path) -> None:
        return None

    def started(self, stage: Stage, checkpoint_dir: Path) -> None:
        return None

    async def ended(self, stage: Stage, checkpoint_dir: Path) -> None:
        return None


class Runner:
    """Turns an Assignment into a Completion.

    Args:
        work_root: where work dirs are made.
        keeper: starts the processes (and outlives this agent process); with
            ``executor = "slurm"``, the :class:`agent.slurm.SlurmExecutor` (Slurm jobs).
        fetch, publish: inputs in, outputs out (:class:`agent.transfers.Transfers`).
        log_sink: where stage output goes (the uplink).
        kill_grace: SIGTERM → SIGKILL when stopping a stage.
        lease_ttl: the current lease TTL (the keeper stops a stage whose lease lapses).
        hooks: checkpoints around each process.
        on_fault: told the reason whenever the agent itself failed a stage.
        keep: work dirs of stages taken over from a previous agent process.
        stage_user: who stages run as (:mod:`agent.stageuser`); None: the agent's user.
    """

    def __init__(
        self,
        work_root: Path,
        keeper: KeeperClient | SlurmExecutor,
        fetch: Fetch,
        publish: Publish,
        log_sink: LogSink,
        *,
        kill_grace: float = 5.0,
        lease_ttl: Callable[[], float] = lambda: 15.0,
        hooks: StageHooks | None = None,
        on_fault: Callable[[str], None] | None = None,
        keep: tuple[Path, ...] = (),
        stage_user: StageUser | None = None,
    ) -> None:
        self.work_root = work_root
        self.stage_user = stage_user
        self.workdirs = WorkdirPool(work_root, 4, keep=keep)
        self.keeper = keeper
        self.fetch = fetch
        self.publish = publish
        self.log_sink = log_sink
        self.kill_grace = kill_grace
        self.lease_ttl = lease_ttl
        self.hooks: StageHooks = hooks or _NoHooks()
        self.on_fault = on_fault
        self._tails: dict[str, LogTail] = {}
        self._tail_task: asyncio.Future[None] | None = None
        self._running: dict[str, Stage] = {}
        keeper.on_pid = self._on_pid

    def _on_pid(self, key: str, pid: int) -> None:
        stage = self._running.get(key)
        if stage is not None:
            stage.pid = pid  # (the lease record has it: agent.supervisor)

    # ------------------------------------------------------------------ one attempt

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        """Prepare, start and watch a stage, then say how it ended (logged about its attempt)."""
        with _about(stage):
            c = await self._attempt(stage)
            log.info("%s/%s attempt %d ended: %s", c.lease.run_id, c.lease.task, c.lease.epoch, c.outcome or "?")
            return c

    async def _attempt(self, stage: Stage) -> agent_pb2.Completion:
        a = stage.assignment
        stage.started_at = stage.started_at or time.time()
        completion = agent_pb2.Completion(lease=a.lease, started_at=stage.started_at)
        if stage.stop_reason is not None:  # stopped before it began
            return self._stopped(completion, stage, stage.stop_reason)
        try:
            try:
                stage.workdir = self.workdirs.take()
            except OSError as exc:
                raise AgentFault(f"cannot make a work dir in {self.work_root}: {exc.strerror or exc}") from None
            await self._prepare(a, stage)
            completion.fetched_at = time.time()  # (trace: the transfer span in)
            if stage.stop_reason is not None:
                return self._stopped(completion, stage, stage.stop_reason)
            await self.hooks.before_start(stage, stage.checkpoint_dir)
            if stage.resume_dir is not None:  # its newest checkpoint was taken from there
                self.workdirs.remove(stage.resume_dir)
                stage.resume_dir = None
            if self.stage_user is not None:
                await self._hand_over(stage.workdir, self.stage_user)
            spawn_at = time.time()
            if not await self._start(stage):
                return self._stopped(completion, stage, stage.stop_reason)  # type: ignore[arg-type]
            completion.exec_started_at = spawn_at  # (trace: the execution span)
            log.info("started %s/%s attempt %d (pid %s)", a.lease.run_id, a.lease.task, a.lease.epoch, stage.pid or "?")
            return await self._finish(stage, completion)
        except Exception as exc:
            return self._broken(stage, completion, exc)
        finally:
            completion.finished_at = time.time()

    async def reattach(self, stage: Stage) -> agent_pb2.Completion:
        """Watch a stage a previous agent process started (the keeper still has it), to its end."""
        with _about(stage):
            return await self._reattach(stage)

    async def _reattach(self, stage: Stage) -> agent_pb2.Completion:
        # (a previous process started it: its execution span runs from the attempt's start)
        completion = agent_pb2.Completion(lease=stage.lease, started_at=stage.started_at)
        completion.exec_started_at = stage.started_at
        try:
            self._watch(stage, resume=True)
            return await self._finish(stage, completion)
        except Exception as exc:
            return self._broken(stage, completion, exc)
        finally:
            completion.finished_at = time.time()

    def _broken(self, stage: Stage, completion: agent_pb2.Completion, exc: Exception) -> agent_pb2.Completion:
        """An attempt that did not get to its own end: whose fault, and what to report."""
        ref = stage.lease
        if isinstance(exc, KeeperLost):
            exc = AgentFault(f"the stage keeper went away: {exc}")
        if isinstance(exc, AgentFault):
            log.error("agent failure running %s/%s attempt %d: %s", ref.run_id, ref.task, ref.epoch, exc)
            completion.outcome = Outcome.RELEASED.value
            completion.error = f"agent failure: {exc}"
            if self.on_fault is not None:
                self.on_fault(str(exc))
            return completion
        if isinstance(exc, ConnectionError):  # the scheduler stayed away for a lease TTL
            completion.outcome = Outcome.RELEASED.value
            completion.error = f"agent could not reach the scheduler: {exc}"
            return completion
        # A broken input, an output that is no file: the attempt fails, the agent goes on.
        log.warning(
            "stage %s/%s attempt %d failed to run: %s",
            ref.run_id,
            ref.task,
            ref.epoch,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        completion.outcome = Outcome.FAILED.value
        completion.error = f"agent could not run the stage: {exc}"
        return completion

    async def _finish(self, stage: Stage, completion: agent_pb2.Completion) -> agent_pb2.Completion:
        """Wait for the process, keep its last checkpoint, publish its outputs."""
        a = stage.assignment
        assert stage.workdir is not None
        try:
            rc = await self._wait(stage)
        except KeeperLost:
            raise
        except OSError as exc:
            rc = self._spawn_failed(stage, exc)
        completion.exit_code = rc
        completion.exec_exited_at = time.time()
        stagemetrics.attach(completion, await self._stage_metrics(stage.workdir))
        await self.hooks.ended(stage, stage.checkpoint_dir)
        reason = stage.stop_reason
        draining = reason is StopReason.DRAINING
        if reason is not None and not (draining and rc == 0):
            return self._stopped(completion, stage, reason)
        if isinstance(self.keeper, SlurmExecutor):  # a Slurm state says more than the exit code
            end = self.keeper.verdict(stage.key_text)
            if end is not None:
                completion.outcome, completion.error = end
                return completion
        if rc != 0:
            completion.outcome = Outcome.FAILED.value
            completion.error = f"exit code {rc}" if rc > 0 else f"killed by signal {-rc}"
            return completion
        outputs = stage.outrider_dir / "outputs"
        # lexists: a link that dangles is there, and publishing it says where it points.
        missing = [name for name in a.spec.outputs if not os.path.lexists(outputs / name)]
        if missing:
            if draining:
                return self._stopped(completion, stage, reason)  # type: ignore[arg-type]
            completion.outcome = Outcome.FAILED.value
            completion.error = (
                f"declared output(s) missing: {', '.join(missing)} (the stage must write each under $OUTRIDER_OUTPUTS)"
            )
            return completion
        if not a.spec.outputs:  # nothing to publish (no path resolved: 14 lstat calls per task saved)
            completion.outcome = Outcome.SUCCEEDED.value
            return completion
        made = os.path.join(os.path.realpath(stage.workdir), os.path.relpath(outputs, stage.workdir))
        if os.path.realpath(outputs) != made:  # links are checked against the outputs dir: it must be ours
            completion.outcome = Outcome.FAILED.value
            completion.error = "$OUTRIDER_OUTPUTS was replaced by a symlink; outputs must be written into it"
            return completion
        completion.upload_started_at = time.time()  # (trace: the transfer span out)
        for name in a.spec.outputs:
            try:
                completion.outputs.append(await self.publish(name, outputs / name))
            except InvalidArgument as exc:  # a link out of the outputs dir, a FIFO: the task's fault
                completion.outcome = Outcome.FAILED.value
                completion.error = str(exc)
                return completion
            except OSError as exc:
                if not isinstance(exc, ConnectionError) and exc.errno in _DISK_ERRNOS:
                    raise AgentFault(f"cannot publish output {name!r}: {exc.strerror or exc}") from None
                raise
        completion.outcome = Outcome.SUCCEEDED.value
        return completion

    async def _stage_metrics(self, workdir: Path) -> metrics.FileSummary:
        """What the stage recorded (:mod:`agent.stagemetrics`): opened on the event loop (a
        few opens of a local work dir: cheaper than a thread hand-off, and most stages record
        nothing), read in a thread; a Slurm job's shared work dir is looked at in a thread."""
        if isinstance(self.keeper, SlurmExecutor):
            return await asyncio.to_thread(stagemetrics.read, workdir)
        found = stagemetrics.open_file(workdir)
        if isinstance(found, metrics.FileSummary):
            return found
        return await asyncio.to_thread(stagemetrics.read_open, found)

    @staticmethod
    def _stopped(c: agent_pb2.Completion, stage: Stage, reason: StopReason) -> agent_pb2.Completion:
        if reason is StopReason.TIMEOUT:
            c.outcome = Outcome.TIMEOUT.value
            c.error = f"timed out after {stage.assignment.spec.timeout_s:g}s; the process group was killed"
        elif reason is StopReason.DRAINING:
            c.outcome = Outcome.RELEASED.value
            c.error = reason.value
        else:
            c.outcome = Outcome.CANCELLED.value
            c.error = f"stopped: {reason.value}"
        return c

    async def _prepare(self, a: agent_pb2.Assignment, stage: Stage) -> None:
        assert stage.workdir is not None
        try:
            if a.code_digest:
                bundle = common_pb2.ArtifactRef(name="code", digest=a.code_digest, kind="dir")
                await self.fetch(bundle, stage.workdir)  # the work dir starts as a copy of the code
            if a.inputs:
                inputs = stage.outrider_dir / "inputs"
                for ref in a.inputs:
                    await self.fetch(ref, inputs / ref.name)
        except OSError as exc:
            if isinstance(exc, ConnectionError):
                raise
            # Writing into the cache or the work dir failed: this machine's fault, not the task's.
            raise AgentFault(f"cannot prepare the work dir: {exc.strerror or exc}") from None

    @staticmethod
    async def _hand_over(workdir: Path, user: StageUser) -> None:
        """The prepared work dir becomes the stage user's (:func:`agent.stageuser.hand_over`)."""
        try:
            await asyncio.to_thread(hand_over, workdir, user)
        except OSError as exc:
            raise AgentFault(f"cannot hand the work dir to {user.name}: {exc.strerror or exc}") from None

    def _env(self, a: agent_pb2.Assignment, odir: str) -> dict[str, str]:
        """What a stage's environment adds to the agent's own (the keeper merges them)."""
        env = dict(a.spec.env)
        env.update(a.spec.secret_env)  # (never logged: the keeper and the agent log no environment)
        env.update(
            OUTRIDER_INPUTS=odir + "inputs",
            OUTRIDER_OUTPUTS=odir + "outputs",
            OUTRIDER_CHECKPOINT_DIR=odir + "checkpoint",
            OUTRIDER_METRICS_FILE=odir + stagemetrics.FILE,
            OUTRIDER_RUN_ID=a.lease.run_id,
            OUTRIDER_TASK=a.lease.task,
            OUTRIDER_ATTEMPT=str(a.lease.epoch),
            OUTRIDER_PIPELINE=a.pipeline,
            TRACEPARENT=a.traceparent,
        )
        return env

    async def _start(self, stage: Stage) -> bool:
        """Hand the process to the keeper (without waiting for it: a failure to start
        comes back through its exit, :meth:`_spawn_failed`); False if the stage was stopped
        before its process started (a cancel, a newer attempt: it never starts)."""
        if not self.keeper.connected:
            await self.keeper.connect()
        if stage.stop_reason is not None:  # (nothing waits between this look and the spawn)
            return False
        a = stage.assignment
        assert stage.workdir is not None
        argv = ["/bin/sh", "-c", a.spec.argv[0]] if a.spec.shell else list(a.spec.argv)
        work = str(stage.workdir)
        o = work + "/.outrider/"
        env = self._env(a, o)
        if isinstance(self.keeper, SlurmExecutor):
            self.keeper.expect(stage.key_text, a)
        self.keeper.launch(
            stage.key_text, argv, env, work, o + "stdout", o + "stderr", stage.last_renewed, self.lease_ttl()
        )
        self._watch(stage)
        return True

    def _spawn_failed(self, stage: Stage, exc: OSError) -> int:
        """The process could not start: the task's fault if its command is wrong (exit
        127/126, as a shell says), else the agent's (AgentFault)."""
        a = stage.assignment
        program = "/bin/sh" if a.spec.shell else a.spec.argv[0]
        if exc.filename == program and exc.errno in _EXEC_ERRNOS:
            self.log_sink(a.lease, "stderr", f"outrider: cannot start {program!r}: {exc.strerror}\n".encode())
            return 127 if exc.errno == errno.ENOENT else 126
        raise AgentFault(f"cannot start a process: {exc.strerror or exc} ({exc.filename or program})") from None

    def _watch(self, stage: Stage, resume: bool = False) -> None:
        """Follow a started process: its exit, its output, its checkpoints."""
        assert stage.workdir is not None
        fut = self.keeper.exit_of(stage.key_text)
        stage.exited = fut

        def exited(f: asyncio.Future[tuple[int, bool]]) -> None:
            if not f.cancelled() and f.exception() is None and f.result()[1] and stage.stop_reason is None:
                stage.stop_reason = StopReason.LEASE_EXPIRED  # the keeper stopped it first

        fut.add_done_callback(exited)
        secrets = stage.assignment.spec.secret_env.values()
        tail = LogTail(stage.lease, stage.outrider_dir, self.log_sink, secrets, own_files=self.stage_user is not None)
        if resume:
            tail.resume()
        self._tails[stage.key_text] = tail
        self._running[stage.key_text] = stage
        if self._tail_task is None:
            self._tail_task = asyncio.ensure_future(self._tail_loop())
        self.hooks.started(stage, stage.checkpoint_dir)

    async def _wait(self, stage: Stage) -> int:
        assert stage.exited is not None
        a = stage.assignment
        timeout: float | None = None
        if a.spec.timeout_s and not isinstance(self.keeper, SlurmExecutor):  # (Slurm's count from the job's start)
            timeout = max(0.0, a.spec.timeout_s - (time.time() - stage.started_at))
        try:
            try:
                if timeout is None:  # (no shield, no timer: its exit wakes this task directly)
                    rc, _ = await stage.exited
                else:
                    rc, _ = await asyncio.wait_for(asyncio.shield(stage.exited), timeout)
            except asyncio.TimeoutError:
                if stage.stop_reason is None:
                    stage.stop_reason = StopReason.TIMEOUT
                self.log_sink(a.lease, "stderr", f"outrider: timed out after {a.spec.timeout_s:g}s; killing\n".encode())
                rc = await self.kill(stage)
        finally:
            self._running.pop(stage.key_text, None)
            tail = self._tails.pop(stage.key_text, None)
            if tail is not None:
                tail.finish()
                stage.output_empty = tail.empty
        return rc

    async def _tail_loop(self) -> None:
        try:
            while self._tails:
                await asyncio.sleep(LOG_POLL_S)
                for tail in list(self._tails.values()):
                    if tail.poll():
                        tail.save()
        finally:
            self._tail_task = None

    def done(self, stage: Stage) -> None:
        """The stage's end is recorded (its result is on disk, or it is not reported): the
        keeper may forget it, and its work dir goes back to the pool (not before: until its
        result is on disk, the next agent process may need what is in it)."""
        if stage.exited is not None:
            self.keeper.forget(stage.key_text)
        if stage.workdir is not None:
            if self.stage_user is None:
                self.workdirs.release(stage.workdir, stage.output_empty)
            else:  # never recycled: the stage user owned it, and a process it left could still change it
                self.workdirs.remove(stage.workdir)
            stage.workdir = None

    async def kill(self, stage: Stage, grace: float | None = None) -> int:
        """SIGTERM the stage's process group, SIGKILL it after the grace period (at once if it is 0)."""
        exited = stage.exited
        if exited is None:
            return -signal.SIGKILL
        if exited.done():
            return _code(exited)
        key = stage.key_text
        try:
            if grace == 0:  # no grace: SIGKILL now
                self.keeper.kill(key, signal.SIGKILL)
                return (await asyncio.shield(exited))[0]
            self.keeper.kill(key, signal.SIGTERM)
            try:
                return (await asyncio.wait_for(asyncio.shield(exited), self.kill_grace if grace is None else grace))[0]
            except asyncio.TimeoutError:
                self.keeper.kill(key, signal.SIGKILL)
                return (await exited)[0]
        except KeeperLost:  # nobody reaps it any more: kill what is left directly
            if stage.workdir is not None:
                await asyncio.to_thread(reap_orphans, stage.workdir)
            return -signal.SIGKILL


def _code(fut: asyncio.Future[tuple[int, bool]]) -> int:
    if fut.cancelled() or fut.exception() is not None:
        return -signal.SIGKILL
    return fut.result()[0]


def reap_orphans(work_root: Path, keep: tuple[Path, ...] = ()) -> int:
    """Kill stages a previous agent process left running that nobody supervises (their
    keeper died with it): they must not run on beside the new attempts the scheduler
    starts elsewhere (invariant 3). A stage is known by its working directory, inside
    ``work_root``; those under ``keep`` (taken over) are spared.
    """
    import psutil

    root = str(work_root.resolve()) + os.sep
    spared = tuple(str(p.resolve()) + os.sep for p in keep)
    killed = 0
    for proc in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = proc.info["cwd"]
            if not cwd or proc.pid == os.getpid():
                continue
            cwd += os.sep
            if cwd.startswith(root) and not cwd.startswith(spared):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
                killed += 1
        except (psutil.Error, OSError):
            continue
    if killed:
        log.warning("killed %d stage process(es) left running by a previous agent", killed)
    return killed


def _about(stage: Stage) -> contextlib.AbstractContextManager[None]:
    """Log records inside are about this attempt (its run, task, attempt and trace: outrider.logfmt)."""
    a = stage.assignment
    return logfmt.context(
        run_id=a.lease.run_id, task=a.lease.task, attempt=a.lease.epoch, trace_id=logfmt.trace_of(a.traceparent)
    )
