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
import collections
import contextlib
import itertools
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.stage import Stage, StopReason
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


LogSink = Callable[[common_pb2.LeaseRef, str, bytes], None]
Fetch = Callable[[common_pb2.ArtifactRef, Path], Awaitable[None]]
Publish = Callable[[str, Path], Awaitable[common_pb2.ArtifactRef]]


class WorkdirPool:
    """Fresh, empty work dirs made ahead of time; used ones removed in the background.

    On a journaling filesystem, making and deleting a work dir (three directories)
    costs about a millisecond of kernel time; done inline it was most of the
    agent's own cost for a short stage (measured with py-spy). A thread keeps a
    few ready and deletes used ones, so the event loop never waits on either.
    """

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = max(2, size)
        self._ready: collections.deque[Path] = collections.deque()
        self._jobs: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._names = itertools.count()
        self._prefix = f"w{os.getpid()}-{int(time.time())}-"
        leftovers = list(root.iterdir()) if root.exists() else []
        root.mkdir(parents=True, exist_ok=True)
        for old in leftovers:  # work dirs of a previous agent process
            self._jobs.put(old)
        for _ in range(self.size):
            self._jobs.put(None)
        self._thread = threading.Thread(target=self._work, name="workdirs", daemon=True)
        self._thread.start()

    def _make(self) -> Path:
        path = self.root / f"{self._prefix}{next(self._names)}"
        (path / ".outrider" / "inputs").mkdir(parents=True)
        (path / ".outrider" / "outputs").mkdir()
        return path

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    if len(self._ready) < self.size:
                        self._ready.append(self._make())
                else:
                    shutil.rmtree(job, ignore_errors=True)
            except OSError:
                log.warning("work dir housekeeping failed", exc_info=True)

    def take(self) -> Path:
        """A fresh work dir with .outrider/inputs and .outrider/outputs."""
        self._jobs.put(None)  # replace the one taken
        try:
            return self._ready.popleft()
        except IndexError:
            return self._make()

    def release(self, path: Path) -> None:
        """Give back a used work dir: recycled when the stage left nothing in it
        (then it is indistinguishable from a fresh one), else removed in the background."""
        if _pristine(path):
            self._ready.append(path)  # the refill take() queued then finds the pool full
        else:
            self._jobs.put(path)


def _pristine(path: Path) -> bool:
    """True when ``path`` holds only empty .outrider/inputs and .outrider/outputs."""
    try:
        with os.scandir(path) as it:
            top = [e.name for e in it]
        if top != [".outrider"]:
            return False
        with os.scandir(path / ".outrider") as it:
            if sorted(e.name for e in it) != ["inputs", "outputs"]:
                return False
        return not any(os.scandir(path / ".outrider" / "inputs")) and not any(
            os.scandir(path / ".outrider" / "outputs")
        )
    except OSError:
        return False


class Runner:
    """Turns an Assignment into a Completion."""

    def __init__(
        self, work_root: Path, fetch: Fetch, publish: Publish, log_sink: LogSink, kill_grace: float = 5.0
    ) -> None:
        self.work_root = work_root
        self.workdirs = WorkdirPool(work_root, 4)
        self.fetch = fetch
        self.publish = publish
        self.log_sink = log_sink
        self.kill_grace = kill_grace
        self._base_env = dict(os.environ)
        self._devnull = os.open(os.devnull, os.O_RDONLY)  # shared stdin for every stage

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        a = stage.assignment
        ref = a.lease
        started = time.time()
        workdir = self.workdirs.take()
        completion = agent_pb2.Completion(lease=ref, started_at=started)
        try:
            inputs, outputs = await self._prepare(a, workdir)
            if stage.stop_reason is not None:
                return self._stopped(completion, stage, stage.stop_reason)
            rc = await self._execute(stage, workdir, inputs, outputs)
            completion.exit_code = rc
            if stage.stop_reason is not None:
                return self._stopped(completion, stage, stage.stop_reason)
            if rc != 0:
                completion.outcome = Outcome.FAILED.value
                completion.error = f"exit code {rc}" if rc > 0 else f"killed by signal {-rc}"
                return completion
            missing = [name for name in a.spec.outputs if not (outputs / name).exists()]
            if missing:
                completion.outcome = Outcome.FAILED.value
                completion.error = (
                    f"declared output(s) missing: {', '.join(missing)} "
                    f"(the stage must write each under $OUTRIDER_OUTPUTS)"
                )
                return completion
            for name in a.spec.outputs:
                out = await self.publish(name, outputs / name)
                completion.outputs.append(out)
            completion.outcome = Outcome.SUCCEEDED.value
            return completion
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken input, a full disk: the attempt fails, the agent goes on
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
        finally:
            completion.finished_at = time.time()
            self.workdirs.release(workdir)

    @staticmethod
    def _stopped(c: agent_pb2.Completion, stage: Stage, reason: StopReason) -> agent_pb2.Completion:
        if reason is StopReason.TIMEOUT:
            c.outcome = Outcome.TIMEOUT.value
            c.error = f"timed out after {stage.assignment.spec.timeout_s:g}s; the process group was killed"
        else:
            c.outcome = Outcome.CANCELLED.value
            c.error = f"stopped: {reason.value}"
        return c

    async def _prepare(self, a: agent_pb2.Assignment, workdir: Path) -> tuple[Path, Path]:
        if a.code_digest:
            bundle = common_pb2.ArtifactRef(name="code", digest=a.code_digest, kind="dir")
            await self.fetch(bundle, workdir)  # the work dir starts as a copy of the code
        inputs = workdir / ".outrider" / "inputs"
        outputs = workdir / ".outrider" / "outputs"
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
        loop = asyncio.get_running_loop()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=self._env(a, inputs, outputs),
                stdin=self._devnull,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: kill the stage and all its children together
            )
        except OSError as exc:
            self.log_sink(a.lease, "stderr", f"outrider: cannot start {argv[0]!r}: {exc}\n".encode())
            return 127
        stage.proc = proc
        stage.exited = self._watch_exit(loop, proc)
        eofs = [self._pump(loop, a.lease, "stdout", proc.stdout), self._pump(loop, a.lease, "stderr", proc.stderr)]
        timeout = a.spec.timeout_s or None
        try:
            rc = await asyncio.wait_for(asyncio.shield(stage.exited), timeout)
        except asyncio.TimeoutError:
            stage.stop_reason = StopReason.TIMEOUT
            self.log_sink(a.lease, "stderr", f"outrider: timed out after {timeout:g}s; killing\n".encode())
            rc = await self.kill(stage)
        # Children the stage left behind die with it, and cannot hold our pipes open.
        _killpg(proc.pid, signal.SIGKILL)
        _, pending = await asyncio.wait(eofs, timeout=2.0)
        for fut in pending:  # a grandchild that left the group still holds a pipe: stop reading
            fut.cancel()
        return rc

    @staticmethod
    def _watch_exit(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> asyncio.Future[int]:
        """A future for the exit code, without a thread per child.

        Linux: a pidfd becomes readable when the child exits, so the event loop
        itself notices (asyncio's default child watcher starts a thread per child).
        Elsewhere, a thread waits.
        """
        fut: asyncio.Future[int] = loop.create_future()
        pidfd_open = getattr(os, "pidfd_open", None)
        try:
            pidfd = pidfd_open(proc.pid) if pidfd_open else -1
        except OSError:
            pidfd = -1
        if pidfd < 0:
            thread_fut = asyncio.ensure_future(asyncio.to_thread(proc.wait))

            def waited(f: asyncio.Future[int]) -> None:
                if not fut.done():
                    fut.set_result(f.result())

            thread_fut.add_done_callback(waited)
            return fut

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not fut.done():
                fut.set_result(proc.wait())

        loop.add_reader(pidfd, on_exit)
        return fut

    def _pump(
        self, loop: asyncio.AbstractEventLoop, lease: common_pb2.LeaseRef, stream: str, pipe: Any
    ) -> asyncio.Future[None]:
        """Forward a pipe to the log sink as data arrives; the future resolves at EOF."""
        eof: asyncio.Future[None] = loop.create_future()
        fd = pipe.fileno()
        os.set_blocking(fd, False)

        def close() -> None:
            loop.remove_reader(fd)
            pipe.close()

        def on_readable() -> None:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.log_sink(lease, stream, data)
                return
            close()
            if not eof.done():
                eof.set_result(None)

        loop.add_reader(fd, on_readable)
        eof.add_done_callback(lambda f: close() if f.cancelled() else None)
        return eof

    async def kill(self, stage: Stage) -> int:
        """SIGTERM the stage's process group, SIGKILL it after the grace period."""
        proc, exited = stage.proc, stage.exited
        if proc is None or exited is None:
            return -signal.SIGKILL
        if exited.done():
            return exited.result()
        _killpg(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(exited), self.kill_grace)
        except asyncio.TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            return await exited


def reap_orphans(work_root: Path) -> int:
    """Kill stages a previous agent process left running (it was SIGKILLed or crashed).

    Their leases are gone with that process, so they must not run on beside the
    new attempts the scheduler starts elsewhere (invariant 3). A stage is known by
    its working directory, which is always inside ``work_root``.
    """
    import psutil

    root = str(work_root.resolve()) + os.sep
    killed = 0
    for proc in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = proc.info["cwd"]
            if cwd and (cwd + os.sep).startswith(root) and proc.pid != os.getpid():
                _killpg(os.getpgid(proc.pid), signal.SIGKILL)
                killed += 1
        except (psutil.Error, OSError):
            continue
    if killed:
        log.warning("killed %d stage process(es) left running by a previous agent", killed)
    return killed


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone (or not ours any more)
        os.killpg(pgid, sig)
