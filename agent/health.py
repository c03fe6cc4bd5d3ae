"""The agent's self-check: can it run a stage at all?

When the agent itself failed a stage (:class:`agent.stage.AgentFault`: no work dir, no
process, a full disk), it reports itself unhealthy and takes no work; every
:data:`CHECK_INTERVAL_S` it runs this check, and the first that passes clears it::

    ┌─────────┐ AgentFault (reason)      ┌───────────┐ self-check passes ┌─────────┐
    │ healthy │─────────────────────────▶│ unhealthy │──────────────────▶│ healthy │
    └─────────┘ heartbeat: unhealthy=…   └───────────┘ heartbeat: ""     └─────────┘
                credits withheld          │  ▲ fails: reason updated       withheld credits given
                                          └──┘
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from agent.keeper_client import KeeperClient

__all__ = ["CHECK_INTERVAL_S", "MIN_FREE_BYTES", "SelfCheck"]

#: How often an unhealthy agent checks itself.
CHECK_INTERVAL_S = 5.0
#: Free space the state dir's filesystem needs for the agent to take work.
MIN_FREE_BYTES = 64 << 20


class SelfCheck:
    """Make a work dir with a file in it, find free disk space, start a process."""

    def __init__(self, work_root: Path, keeper: KeeperClient, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        self.work_root = work_root
        self.keeper = keeper
        self.min_free_bytes = min_free_bytes

    async def run(self) -> str | None:
        """None if the agent can run stages, else why not."""
        try:
            problem = await asyncio.to_thread(self._disk)
        except OSError as exc:
            return f"cannot make a work dir in {self.work_root}: {exc.strerror or exc}"
        if problem:
            return problem
        return await self._spawn()

    def _disk(self) -> str | None:
        probe = self.work_root / f".selfcheck-{os.urandom(4).hex()}"
        try:
            (probe / ".outrider").mkdir(parents=True)
            with open(probe / ".outrider" / "probe", "wb") as fh:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        free = shutil.disk_usage(self.work_root).free
        if free < self.min_free_bytes:
            return f"disk nearly full: {free >> 20} MiB free under {self.work_root}"
        return None

    async def _spawn(self) -> str | None:
        key = f".selfcheck\t{os.urandom(4).hex()}\t0"
        try:
            await self.keeper.spawn(key, ["true"], {}, self.work_root, Path(os.devnull), Path(os.devnull), 0.0, 0.0)
            code, _ = await asyncio.wait_for(asyncio.shield(self.keeper.exit_of(key)), 30)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"cannot start a process: {exc}"
        finally:
            self.keeper.forget(key)
        return None if code == 0 else f"cannot start a process: `true` exited with {code}"
