"""The runner with a real keeper and real processes (no scheduler): whose fault a failure is
(issue 7, fault 7), output forwarded from files, work dirs recycled, a drained stage."""

from __future__ import annotations

import asyncio
import errno
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from agent.keeper_client import KeeperClient
from agent.runner import Runner
from agent.stage import Stage, StopReason
from outrider.v1 import agent_pb2, common_pb2


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.keeper = KeeperClient(self.state)
        self.logs: list[tuple[str, bytes]] = []
        self.faults: list[str] = []
        self.published: list[str] = []
        self.publish_error: OSError | None = None
        self.runner = Runner(
            self.state / "work",
            self.keeper,
            self.fetch,
            self.publish,
            lambda lease, stream, data: self.logs.append((stream, data)),
            kill_grace=1.0,
            on_fault=self.faults.append,
        )

    async def fetch(self, ref: common_pb2.ArtifactRef, dest: Path) -> None:
        return None

    async def publish(self, name: str, path: Path) -> common_pb2.ArtifactRef:
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append(path.read_text())
        return common_pb2.ArtifactRef(name=name, digest="0" * 64)

    def stage(self, argv: list[str], shell: bool = False, outputs: tuple[str, ...] = (), task: str = "t") -> Stage:
        return Stage(
            agent_pb2.Assignment(
                lease=common_pb2.LeaseRef(run_id="r1", task=task, epoch=1),
                spec=common_pb2.TaskSpec(argv=argv, shell=shell, outputs=list(outputs)),
            )
        )

    async def close(self) -> None:
        await self.keeper.close()
        try:
            pid = int((self.state / "keeper.lock").read_text())
            psutil.Process(pid).kill()
        except (FileNotFoundError, ValueError, psutil.Error):
            pass


@pytest.fixture
def tmp_rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_output_comes_from_files_and_a_clean_work_dir_is_reused(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        try:
            script = 'echo out; echo err >&2; echo hi > "$OUTRIDER_OUTPUTS/o"; test -d "$OUTRIDER_CHECKPOINT_DIR"'
            st = rig.stage([script], shell=True, outputs=("o",))
            c = await rig.runner.run(st)
            assert (c.outcome, c.exit_code) == ("succeeded", 0), c.error
            assert sorted(rig.logs) == [("stderr", b"err\n"), ("stdout", b"out\n")]
            assert rig.published == ["hi\n"]
            used = st.workdir
            rig.runner.done(st)  # (its result is on disk: the work dir goes)
            assert used is not None and used not in rig.runner.workdirs._ready  # it printed: not recycled
            plain = rig.stage(["true"], task="plain")
            c = await rig.runner.run(plain)
            assert c.outcome == "succeeded"
            untouched = plain.workdir
            assert untouched is not None and untouched not in rig.runner.workdirs._ready  # kept until done
            rig.runner.done(plain)
            assert untouched in rig.runner.workdirs._ready and untouched.is_dir()  # back in the pool
            # Its output files are still there, empty: it printed nothing, so the work dir is recycled as is.
            assert (untouched / ".outrider" / "stdout").stat().st_size == 0
        finally:
            await rig.close()

    run(scenario)


def test_a_task_without_outputs_may_replace_its_outputs_dir_but_its_work_dir_is_not_reused(
    tmp_rig: Rig, tmp_path: Path
) -> None:
    """A task that declares no outputs has nothing published, so its outputs dir is not
    resolved (no realpath per task); one whose stage swapped that dir for a link succeeds,
    and its work dir is removed (the link, not what it points to), never recycled."""
    away = tmp_path / "away"
    away.mkdir()
    (away / "keep").write_text("x")

    async def scenario() -> None:
        rig = tmp_rig
        try:
            st = rig.stage([f'rm -r "$OUTRIDER_OUTPUTS" && ln -s {away} "$OUTRIDER_OUTPUTS"'], shell=True)
            c = await rig.runner.run(st)
            assert (c.outcome, c.exit_code) == ("succeeded", 0), c.error
            used = st.workdir
            assert used is not None and (used / ".outrider" / "outputs").is_symlink()
            rig.runner.done(st)
            assert used not in rig.runner.workdirs._ready  # not recycled: the next stage gets a fresh one
            deadline = asyncio.get_running_loop().time() + 10
            while used.exists() or used.is_symlink():  # removed in the background
                assert asyncio.get_running_loop().time() < deadline, "the work dir was not removed"
                await asyncio.sleep(0.01)
            assert (away / "keep").read_text() == "x"  # the link's target is untouched
            assert rig.faults == []
        finally:
            await rig.close()

    run(scenario)


def test_a_wrong_command_is_the_tasks_fault(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        try:
            c = await rig.runner.run(rig.stage(["no-such-program-anywhere"]))
            assert (c.outcome, c.exit_code) == ("failed", 127)
            assert any(b"cannot start 'no-such-program-anywhere'" in d for _, d in rig.logs)
            assert rig.faults == []
        finally:
            await rig.close()

    run(scenario)


def test_no_work_dir_is_the_agents_fault(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        try:
            work = rig.state / "work"
            work.rename(rig.state / "work.old")
            work.write_text("a file where the work root was")
            c = await rig.runner.run(rig.stage(["true"]))
            assert c.outcome == "released" and c.error.startswith("agent failure: cannot make a work dir")
            assert len(rig.faults) == 1
        finally:
            await rig.close()

    run(scenario)


def test_a_full_disk_while_publishing_is_the_agents_fault(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        try:
            rig.publish_error = OSError(errno.ENOSPC, "No space left on device")
            c = await rig.runner.run(rig.stage(['echo x > "$OUTRIDER_OUTPUTS/o"'], shell=True, outputs=("o",)))
            assert c.outcome == "released" and "No space left on device" in c.error
            assert rig.faults and "cannot publish output 'o'" in rig.faults[0]
        finally:
            await rig.close()

    run(scenario)


def test_a_drained_stage_is_released_unless_it_finished(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        try:
            st = rig.stage(["sleep", "30"])
            task = asyncio.ensure_future(rig.runner.run(st))
            while st.exited is None:
                await asyncio.sleep(0.01)
            st.stop_reason = StopReason.DRAINING
            await rig.runner.kill(st, grace=5.0)
            c = await task
            assert (c.outcome, c.error, c.exit_code) == ("released", "agent draining", -signal.SIGTERM)
            # Asked to stop, it finished its work anyway: that is a result, not a release.
            done = rig.stage(["sh", "-c", 'trap "" TERM; sleep 0.3; echo x > "$OUTRIDER_OUTPUTS/o"'],
                             outputs=("o",), task="done")
            task = asyncio.ensure_future(rig.runner.run(done))
            while done.exited is None:
                await asyncio.sleep(0.01)
            done.stop_reason = StopReason.DRAINING
            await rig.runner.kill(done, grace=5.0)
            c = await task
            assert c.outcome == "succeeded"
        finally:
            await rig.close()

    run(scenario)


def test_the_keeper_stopping_a_lapsed_stage_reads_as_a_lease_expiry(tmp_rig: Rig) -> None:
    async def scenario() -> None:
        rig = tmp_rig
        rig.runner.lease_ttl = lambda: 0.3  # nobody renews it
        try:
            st = rig.stage(["sleep", "30"])
            c = await rig.runner.run(st)
            assert st.stop_reason is StopReason.LEASE_EXPIRED
            assert c.outcome == "cancelled" and c.error == "stopped: lease expired"
        finally:
            await rig.close()

    run(scenario)




def test_a_program_the_os_cannot_take_is_the_tasks_fault_and_the_keeper_lives_on(tmp_rig: Rig) -> None:
    """A NUL byte in the command (the scheduler refuses such a spec; this is defence in depth)
    fails the attempt like a wrong command, without ending the keeper or the agent's health."""

    async def scenario() -> None:
        rig = tmp_rig
        try:
            c = await rig.runner.run(rig.stage(["tr\0ue"]))
            assert (c.outcome, c.exit_code) == ("failed", 127), c.error  # no such program
            bad_env = rig.stage(["true"], task="env")
            bad_env.assignment.spec.env["X"] = "a\0b"
            c = await rig.runner.run(bad_env)
            assert (c.outcome, c.exit_code) == ("failed", 126), c.error  # the OS cannot take it
            assert rig.faults == []
            c = await rig.runner.run(rig.stage(["true"], task="after"))
            assert c.outcome == "succeeded"
        finally:
            await rig.close()

    run(scenario)


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ('ln -s /etc/passwd "$OUTRIDER_OUTPUTS/o"', r"^output 'o': the symlink o -> '/etc/passwd' points outside"),
        ('ln -s "$OUTRIDER_OUTPUTS/gone" "$OUTRIDER_OUTPUTS/o"', r"^output 'o': the symlink o -> .* dangles"),
        ('mkdir "$OUTRIDER_OUTPUTS/o" && ln -s .. "$OUTRIDER_OUTPUTS/o/up"', r"^output 'o': .* cycle of links"),
        ('mkdir away && echo x > away/o && rm -r "$OUTRIDER_OUTPUTS" && ln -s "$PWD/away" "$OUTRIDER_OUTPUTS"',
         r"^\$OUTRIDER_OUTPUTS was replaced by a symlink"),
    ],
    ids=["outside", "dangling", "cycle", "outputs-dir-replaced"],
)
def test_an_output_that_is_a_bad_symlink_fails_the_task_not_the_agent(
    tmp_rig: Rig, tmp_path: Path, script: str, error: str
) -> None:
    """Issue 8: a stage cannot publish what a link outside its outputs dir points to."""
    from outrider.artifacts import describe

    scratch = tmp_path / "scratch"
    scratch.mkdir()

    async def publish(name: str, path: Path) -> common_pb2.ArtifactRef:
        digest, size, kind, _ = await asyncio.to_thread(describe, path, scratch)
        return common_pb2.ArtifactRef(name=name, digest=digest, size=size, kind=kind)

    async def scenario() -> None:
        rig = tmp_rig
        rig.runner.publish = publish
        try:
            c = await rig.runner.run(rig.stage([script], shell=True, outputs=("o",)))
            assert (c.outcome, c.exit_code) == ("failed", 0), c.error
            assert re.search(error, c.error), c.error
            assert rig.faults == [] and list(c.outputs) == []
            # A link that stays inside the outputs dir is published as what it points to.
            ok = 'echo hi > "$OUTRIDER_OUTPUTS/real" && ln -s real "$OUTRIDER_OUTPUTS/o"'
            c = await rig.runner.run(rig.stage([ok], shell=True, outputs=("o",), task="ok"))
            assert c.outcome == "succeeded", c.error
            assert [(o.name, o.kind, o.size) for o in c.outputs] == [("o", "file", 3)]
        finally:
            await rig.close()

    run(scenario)
