"""Checkpoints for stages: save progress, and resume from it on the next attempt.

In a Python stage::

    from outrider import checkpoint

    state = checkpoint.load()                    # None on a fresh start
    start = state["epoch"] + 1 if state else 1
    for epoch in range(start, epochs + 1):
        ...
        checkpoint.save({"epoch": epoch, "model": model})   # any picklable object
    # or a file or directory, copied as it is now: checkpoint.save(Path("model.pt"));
    # load() then returns the Path of that copy.

Any other stage uses the directory ``$OUTRIDER_CHECKPOINT_DIR`` by this rule (the one
these functions follow):

1. Write each checkpoint into a **new subdirectory** of ``$OUTRIDER_CHECKPOINT_DIR`` whose
   name does not start with ``.`` (``ckpt-0042``).
2. When everything is written, create the empty file ``.complete`` in it, **last**. A
   subdirectory without ``.complete`` is never read: a half-written checkpoint is never used.
3. Never change a complete checkpoint afterwards, and do not remove old ones: write the next
   one into a new subdirectory; the agent removes those a newer complete one supersedes.
4. The checkpoint is the newest complete subdirectory (by the modification time of its
   ``.complete``, then by name). Before an attempt that resumes starts, the agent restores
   the checkpoint it resumes from as ``$OUTRIDER_CHECKPOINT_DIR/resumed/``.

The agent keeps each complete checkpoint (in its own store, so it survives the work dir),
uploads it in the background and reports it to the scheduler; a later attempt of the task,
on this agent or another, starts with it restored. When the agent drains (or the attempt
must stop), the stage gets SIGTERM and has the agent's ``drain_grace`` to save a last
checkpoint and exit. Outside Outrider (no ``$OUTRIDER_CHECKPOINT_DIR``) :func:`save` does
nothing and :func:`load` returns None.

Objects are pickled: :func:`load` unpickles what an earlier attempt of the same task
saved. Save a :class:`~pathlib.Path` in your own format to avoid pickle.

Standard library only: a stage imports this without gRPC or the rest of Outrider.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["ENV", "MARKER", "directory", "latest", "load", "save"]

#: The environment variable naming the stage's checkpoint directory.
ENV = "OUTRIDER_CHECKPOINT_DIR"
#: Created last in a checkpoint subdirectory: it is complete.
MARKER = ".complete"
_OBJECT = "checkpoint.pickle"
_META = "outrider-checkpoint.json"


def directory() -> Path | None:
    """``$OUTRIDER_CHECKPOINT_DIR`` (made if missing), or None outside Outrider."""
    value = os.environ.get(ENV)
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(obj_or_path: Any) -> Path | None:
    """Save a checkpoint: a :class:`~os.PathLike` (a file or directory, copied) or any
    other picklable object. Returns the checkpoint's subdirectory (None outside Outrider).

    The checkpoint is built in a hidden directory, marked complete, then renamed into
    place in one step, so nobody ever sees half of it.
    """
    root = directory()
    if root is None:
        return None
    stamp = time.time_ns()
    tmp = root / f".tmp-{os.getpid()}-{stamp}"
    tmp.mkdir()
    try:
        if isinstance(obj_or_path, os.PathLike):
            src = Path(obj_or_path)
            if src.is_dir():
                shutil.copytree(src, tmp / src.name, symlinks=False)
            elif src.is_file():
                shutil.copy2(src, tmp / src.name)
            else:
                raise FileNotFoundError(f"checkpoint.save: {src} is neither a file nor a directory")
            meta: dict[str, str] = {"kind": "path", "name": src.name}
        else:
            with open(tmp / _OBJECT, "wb") as fh:
                pickle.dump(obj_or_path, fh, protocol=pickle.HIGHEST_PROTOCOL)
            meta = {"kind": "object"}
        (tmp / _META).write_text(json.dumps(meta))
        _sync_tree(tmp)  # the bytes are on disk before the marker says so (a power cut)
        (tmp / MARKER).touch()  # last: from here on it is complete
        final = root / f"ckpt-{stamp:020d}"
        os.rename(tmp, final)
        _sync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(top: Path) -> None:
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            _sync(Path(dirpath) / name)
        _sync(Path(dirpath))


def latest() -> Path | None:
    """The newest complete checkpoint subdirectory, or None."""
    root = directory()
    if root is None:
        return None
    best: tuple[int, str] | None = None
    for entry in os.scandir(root):
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            mtime = os.stat(os.path.join(entry.path, MARKER)).st_mtime_ns
        except OSError:
            continue  # not complete: never read
        if best is None or (mtime, entry.name) > best:
            best = (mtime, entry.name)
    return None if best is None else root / best[1]


def load() -> Any:
    """The latest checkpoint: the object saved, or the :class:`~pathlib.Path` of the file
    or directory saved (of the subdirectory itself, for one written by the plain rule);
    None when there is none."""
    path = latest()
    if path is None:
        return None
    try:
        meta = json.loads((path / _META).read_text())
    except (OSError, ValueError):
        return path  # written by the plain-directory rule
    if meta.get("kind") == "object":
        with open(path / _OBJECT, "rb") as fh:
            return pickle.load(fh)
    return path / str(meta.get("name", ""))
