"""One live process per state dir.

Two schedulers on one database, or two agents on one work root, destroy each
other's state (an agent deletes the other's work dirs; two schedulers both serve
and both write). So a daemon takes an exclusive ``flock`` on ``STATE_DIR/lock``
before it touches anything else, and holds it for its whole life; the kernel
drops the lock when the process dies, however it dies, so a crashed daemon never
leaves a stale lock behind. The holder's pid is written into the file so the
second start can say who has it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from outrider.errors import ConfigError

LOCK_NAME = "lock"


class StateDirLock:
    """Exclusive ownership of a state dir by this process (see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "this state dir") -> StateDirLock:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another process (pid {holder}, holding {self.path}); "
                f"one {what} per state dir: stop it, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
