"""The stage keeper, as a real process: it starts stages, reports their exits, stops a stage
whose lease lapsed, hands its stages over to the next agent process, and goes away when
nobody needs it."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from agent.keeper_client import KeeperClient, KeeperLost


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def keeper_pid(state: Path) -> int:
    return int((state / "keeper.lock").read_text())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    yield d
    # Never leave a keeper (or its stages) behind.
    try:
        pid = keeper_pid(d)
    except (FileNotFoundError, ValueError):
        return
    for child in psutil.Process(pid).children(recursive=True) if alive(pid) else []:
        child.kill()
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


async def spawn(k: KeeperClient, key: str, cmd: str, work: Path, ttl: float = 30.0) -> int:
    work.mkdir(exist_ok=True)
    return await k.spawn(
        key, ["/bin/sh", "-c", cmd], {"X": "1"}, work, work / "out", work / "err", time.monotonic(), ttl
    )


def test_it_runs_a_stage_and_reports_its_exit(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        k = KeeperClient(state, env={"PATH": os.environ["PATH"], "BASE": "b"})
        assert await k.connect() == []
        pid = await spawn(k, "a", 'echo "$BASE$X"; echo oops >&2; exit 3', tmp_path / "w")
        assert pid > 0
        assert await k.exit_of("a") == (3, False)
        assert (tmp_path / "w" / "out").read_text() == "b1\n"
        assert (tmp_path / "w" / "err").read_text() == "oops\n"
        await k.close()

    run(scenario)


def test_spawn_failures_name_what_failed(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        k = KeeperClient(state)
        work = tmp_path / "w"
        work.mkdir()
        with pytest.raises(OSError) as exc:
            await k.spawn("a", ["no-such-program-x"], {}, work, work / "o", work / "e", time.monotonic(), 30)
        assert exc.value.errno == errno.ENOENT and exc.value.filename == "no-such-program-x"
        gone = tmp_path / "gone"
        with pytest.raises(OSError) as exc:
            await k.spawn("b", ["true"], {}, gone, work / "o", work / "e", time.monotonic(), 30)
        assert exc.value.filename == str(gone)
        await k.close()

    run(scenario)


def test_a_stage_whose_lease_lapses_is_stopped_and_renewals_keep_it(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        k = KeeperClient(state, grace=0.5)
        await spawn(k, "kept", "exec sleep 30", tmp_path / "w1", ttl=0.6)
        await spawn(k, "lapsed", "exec sleep 30", tmp_path / "w2", ttl=0.6)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            k.renew(["kept"], time.monotonic(), 0.6)
            await asyncio.sleep(0.1)
        assert k.exit_of("lapsed").done() and k.exit_of("lapsed").result() == (-signal.SIGTERM, True)
        assert not k.exit_of("kept").done()
        k.renew(["kept"], time.monotonic(), 30)  # a longer lease now
        # A stage that ignores SIGTERM is killed after the grace.
        await spawn(k, "stubborn", "trap '' TERM; while :; do sleep 0.05; done", tmp_path / "w3", ttl=0.3)
        code, expired = await asyncio.wait_for(asyncio.shield(k.exit_of("stubborn")), 5)
        assert expired and code in (-signal.SIGKILL, 128 + signal.SIGKILL)
        k.kill("kept", signal.SIGTERM)
        assert await k.exit_of("kept") == (-signal.SIGTERM, False)
        await k.close()

    run(scenario)


def test_the_next_agent_process_takes_the_stages_over(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        first = KeeperClient(state)
        running = await spawn(first, "long", "exec sleep 30", tmp_path / "w1")
        await spawn(first, "short", "sleep 0.2; exit 4", tmp_path / "w2")
        await first.close()  # the agent dies; its stages run on
        await until(lambda: (tmp_path / "w2" / "out").exists(), 5, "the short stage")
        await asyncio.sleep(0.5)  # the short stage ends while no agent is there
        assert alive(running)
        second = KeeperClient(state)
        stages = {s["key"]: s for s in await second.connect()}
        assert stages["long"]["pid"] == running and stages["long"]["code"] is None
        assert stages["short"]["code"] == 4
        assert await second.exit_of("short") == (4, False)
        second.forget("short")
        second.flush_forgets()  # (told with the next spawn, or within a second)
        second.kill("long", signal.SIGTERM)
        assert await second.exit_of("long") == (-signal.SIGTERM, False)
        assert {s["key"] for s in await second.connect()} == {"long"}
        await second.close()

    run(scenario)


def test_a_keeper_nobody_needs_goes_away(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        k = KeeperClient(state)
        await spawn(k, "a", "exit 0", tmp_path / "w")
        await k.exit_of("a")
        k.forget("a")
        pid = keeper_pid(state)
        assert alive(pid)  # an agent is connected
        await k.close()
        await until(lambda: not alive(pid), 5, "the keeper to exit")
        assert not (state / "keeper.sock").exists()
        # The next spawn starts a new one.
        k = KeeperClient(state)
        await spawn(k, "b", "exit 0", tmp_path / "w")
        assert keeper_pid(state) != pid
        await k.close()

    run(scenario)


def test_a_dead_keeper_is_reported(state: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        k = KeeperClient(state)
        await spawn(k, "a", "exec sleep 30", tmp_path / "w")
        pid = keeper_pid(state)
        exit_a = k.exit_of("a")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(KeeperLost):
            await exit_a
        assert not k.connected

    run(scenario)
