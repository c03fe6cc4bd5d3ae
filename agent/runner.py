"""Runs one stage: work dir, inputs, subprocess in its own process group, outputs.

A stage gets a fresh work dir holding a copy of the pipeline's code bundle and
this environment: ``OUTRIDER_INPUTS`` (each declared input under its name),
``OUTRIDER_OUTPUTS`` (where it writes each declared output), ``OUTRIDER_RUN_ID``,
``OUTRIDER_TASK``, ``OUTRIDER_ATTEMPT`` (1-based), ``TRACEPARENT`` (W3C trace
context), plus the task's own ``env``.

The stage runs in a new session (its own process group), so a timeout, a
cancel or a lost lease kills the stage *and every child it started*: SIGTERM to
the group, then SIGKILL after a grace period.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from outrider.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


@dataclass(eq=False)
class Stage:
    """One attempt running on this agent."""

    assignment: agent_pb2.Assignment
    started_mono: float = field(default_factory=time.monotonic)
    last_renewed: float = field(default_factory=time.monotonic)
    proc: asyncio.subprocess.Process | None = None
    stop_reason: str = ""          # "timeout", "cancelled" or "lost" once we decided to stop it
    task: asyncio.Task[Any] | None = None

    @property
    def lease(self) -> common_pb2.LeaseRef:
        return self.assignment.lease

    @property
    def key(self) -> tuple[str, str, int]:
        ref = self.assignment.lease
        return (ref.run_id, ref.task, ref.epoch)


LogSink = Callable[[common_pb2.LeaseRef, str, bytes], None]
Fetch = Callable[[common_pb2.ArtifactRef, Path], Awaitable[None]]
Publish = Callable[[str, Path], Awaitable[common_pb2.ArtifactRef]]


class Runner:
    """Turns an Assignment into a Completion."""

    def __init__(self, work_root: Path, fetch: Fetch, publish: Publish, log_sink: LogSink,
                 kill_grace: float = 5.0) -> None:
        self.work_root = work_root
        self.fetch = fetch
        self.publish = publish
        self.log_sink = log_sink
        self.kill_grace = kill_grace
        self._base_env = dict(os.environ)

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        a = stage.assignment
        ref = a.lease
        started = time.time()
        workdir = self.work_root / f"{ref.run_id}.{ref.task}.{ref.epoch}"
        completion = agent_pb2.Completion(lease=ref, started_at=started)
        try:
            inputs, outputs = await self._prepare(a, workdir)
            if stage.stop_reason:
                return self._stopped(completion, stage)
            rc = await self._execute(stage, workdir, inputs, outputs)
            completion.exit_code = rc
            if stage.stop_reason:
                return self._stopped(completion, stage)
            if rc != 0:
                completion.outcome = "failed"
                completion.error = f"exit code {rc}" if rc > 0 else f"killed by signal {-rc}"
                return completion
            missing = [name for name in a.spec.outputs if not (outputs / name).exists()]
            if missing:
                completion.outcome = "failed"
                completion.error = (
                    f"declared output(s) missing: {', '.join(missing)} "
                    f"(the stage must write each under $OUTRIDER_OUTPUTS)"
                )
                return completion
            for name in a.spec.outputs:
                out = await self.publish(name, outputs / name)
                completion.outputs.append(out)
            completion.outcome = "succeeded"
            return completion
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken input, a full disk: the attempt fails, the agent goes on
            log.warning("stage %s/%s attempt %d failed to run: %s", ref.run_id, ref.task, ref.epoch, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            completion.outcome = "failed"
            completion.error = f"agent could not run the stage: {exc}"
            return completion
        finally:
            completion.finished_at = time.time()
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _stopped(c: agent_pb2.Completion, stage: Stage) -> agent_pb2.Completion:
        c.outcome = "timeout" if stage.stop_reason == "timeout" else "cancelled"
        if stage.stop_reason == "timeout":
            c.error = f"timed out after {stage.assignment.spec.timeout_s:g}s; the process group was killed"
        else:
            c.error = f"stopped: {stage.stop_reason}"
        return c

    async def _prepare(self, a: agent_pb2.Assignment, workdir: Path) -> tuple[Path, Path]:
        if a.code_digest:
            bundle = common_pb2.ArtifactRef(name="code", digest=a.code_digest, kind="dir")
            await self.fetch(bundle, workdir)  # the work dir starts as a copy of the code
        workdir.mkdir(parents=True, exist_ok=True)
        inputs = workdir / ".outrider" / "inputs"
        outputs = workdir / ".outrider" / "outputs"
        inputs.mkdir(parents=True)
        outputs.mkdir()
        for ref in a.inputs:
            await self.fetch(ref, inputs / ref.name)
        return inputs, outputs

    def _env(self, a: agent_pb2.Assignment, inputs: Path, outputs: Path) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(a.spec.env)
        env.update(
            OUTRIDER_INPUTS=str(inputs),
            OUTRIDER_OUTPUTS=str(outputs),
            OUTRIDER_RUN_ID=a.lease.run_id,
            OUTRIDER_TASK=a.lease.task,
            OUTRIDER_ATTEMPT=str(a.lease.epoch),
            OUTRIDER_PIPELINE=a.pipeline,
            TRACEPARENT=a.traceparent,
        )
        return env

    async def _execute(self, stage: Stage, workdir: Path, inputs: Path, outputs: Path) -> int:
        a = stage.assignment
        argv = ["/bin/sh", "-c", a.spec.argv[0]] if a.spec.shell else list(a.spec.argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=workdir, env=self._env(a, inputs, outputs),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own process group: kill the stage and all its children together
            )
        except OSError as exc:
            self.log_sink(a.lease, "stderr", f"outrider: cannot start {argv[0]!r}: {exc}\n".encode())
            return 127
        stage.proc = proc
        pumps = [
            asyncio.ensure_future(self._pump(a.lease, "stdout", proc.stdout)),
            asyncio.ensure_future(self._pump(a.lease, "stderr", proc.stderr)),
        ]
        timeout = a.spec.timeout_s or None
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            stage.stop_reason = "timeout"
            self.log_sink(a.lease, "stderr", f"outrider: timed out after {timeout:g}s; killing\n".encode())
            rc = await self.kill(stage)
        # Children the stage left behind die with it, and cannot hold our pipes open.
        _killpg(proc.pid, signal.SIGKILL)
        await asyncio.gather(*pumps, return_exceptions=True)
        return rc

    async def _pump(self, lease: common_pb2.LeaseRef, stream: str, reader: asyncio.StreamReader | None) -> None:
        if reader is None:
            return
        while data := await reader.read(READ_CHUNK):
            self.log_sink(lease, stream, data)

    async def kill(self, stage: Stage) -> int:
        """SIGTERM the stage's process group, SIGKILL it after the grace period."""
        proc = stage.proc
        if proc is None:
            return -signal.SIGKILL
        if proc.returncode is not None:
            return proc.returncode
        _killpg(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), self.kill_grace)
        except asyncio.TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            return await proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
