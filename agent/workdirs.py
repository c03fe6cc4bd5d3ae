"""Stage work dirs: made ahead of time, recycled when untouched, removed in the background.

A work dir holds ``.outrider/inputs``, ``.outrider/outputs`` and ``.outrider/checkpoint``
(``$OUTRIDER_CHECKPOINT_DIR``), and the files ``.outrider/stdout`` and ``.outrider/stderr``
(the stage writes its output there, not into a pipe to the agent, so it does not depend on
the agent process: see :mod:`agent.keeper`).

The two output files are made with the work dir and stay while they are empty: a stage
that printed nothing leaves a work dir that is recycled as it is. Creating and unlinking
two files per stage cost more than anything else the keeper did for a short stage (ext4's
inode allocation, measured with ``perf``: about a third of the keeper's CPU).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OUTPUT_FILES", "SUBDIRS", "WorkdirPool"]

log = logging.getLogger(__name__)

#: The directories every fresh work dir has under ``.outrider``.
SUBDIRS = ("checkpoint", "inputs", "outputs")
#: The stage's output files every fresh work dir has under ``.outrider`` (empty).
OUTPUT_FILES = ("stderr", "stdout")
#: What a recycled ``.outrider`` holds, sorted.
_PRISTINE = tuple(sorted(SUBDIRS + OUTPUT_FILES))


class WorkdirPool:
    """Fresh, empty work dirs made ahead of time; used ones removed in the background.

    On a journaling filesystem, making and deleting a work dir (four directories)
    costs about a millisecond of kernel time; done inline it was most of the
    agent's own cost for a short stage (measured with py-spy). A thread keeps a
    few ready and deletes used ones, so the event loop never waits on either.

    Args:
        root: where work dirs live.
        size: how many to keep ready.
        keep: work dirs of a previous agent process that must stay (stages taken over);
            every other leftover is removed.
    """

    def __init__(self, root: Path, size: int, keep: Iterable[Path] = ()) -> None:
        self.root = root
        self.size = max(2, size)
        self._ready: collections.deque[Path] = collections.deque()
        self._jobs: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._names = itertools.count()
        self._prefix = f"w{os.getpid()}-{int(time.time())}-"
        kept = {Path(p) for p in keep}
        leftovers = [p for p in root.iterdir() if p not in kept] if root.exists() else []
        root.mkdir(parents=True, exist_ok=True)
        for old in leftovers:  # work dirs of a previous agent process
            self._jobs.put(old)
        for _ in range(self.size):
            self._jobs.put(None)
        self._thread = threading.Thread(target=self._work, name="workdirs", daemon=True)
        self._thread.start()

    def _make(self) -> Path:
        path = self.root / f"{self._prefix}{next(self._names)}"
        (path / ".outrider").mkdir(parents=True)
        for sub in SUBDIRS:
            (path / ".outrider" / sub).mkdir()
        for name in OUTPUT_FILES:
            os.close(os.open(path / ".outrider" / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
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
        """A fresh work dir with its ``.outrider`` subdirectories; OSError if none can be made."""
        if len(self._ready) <= self.size // 2:
            self._jobs.put(None)  # running low: make one more (an untouched one comes back by itself)
        while True:
            try:
                path = self._ready.popleft()
            except IndexError:
                return self._make()
            if path.is_dir():
                return path
            # made ahead, then removed behind our back (the work root was replaced): next

    def release(self, path: Path, output_empty: bool = False) -> None:
        """Give back a used work dir: recycled when the stage left nothing in it
        (then it is indistinguishable from a fresh one), else removed in the background.
        ``output_empty``: the caller saw both output files empty (no need to look again)."""
        if _pristine(path, output_empty):
            self._ready.append(path)  # the refill take() queued then finds the pool full
        else:
            self._jobs.put(path)

    def remove(self, path: Path) -> None:
        """Remove a work dir in the background (one kept from a previous process)."""
        self._jobs.put(path)


def _pristine(path: Path, output_empty: bool = False) -> bool:
    """True when ``path`` holds only the empty ``.outrider`` subdirectories and output files.

    Nothing in it may be a symbolic link, even one to an empty directory: the next stage's
    inputs, outputs, checkpoints and output would go wherever it points.
    """
    base = str(path)
    try:
        with os.scandir(base) as it:
            top = list(it)
        if len(top) != 1 or top[0].name != ".outrider" or not top[0].is_dir(follow_symlinks=False):
            return False
        o = base + "/.outrider"
        with os.scandir(o) as it:
            entries = sorted(it, key=_name)
        if tuple(e.name for e in entries) != _PRISTINE:
            return False
        for e in entries:
            if e.name in OUTPUT_FILES:
                if not e.is_file(follow_symlinks=False) or (not output_empty and e.stat(follow_symlinks=False).st_size):
                    return False
            elif not e.is_dir(follow_symlinks=False):
                return False
        for sub in SUBDIRS:
            with os.scandir(f"{o}/{sub}") as it:
                if next(it, None) is not None:
                    return False
        return True
    except OSError:
        return False


def _name(e: os.DirEntry[str]) -> str:
    return e.name
