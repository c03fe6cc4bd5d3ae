"""Stage checkpoints on the agent: snapshot, keep, upload, report, restore.

The rule a stage follows (``docs/pipeline.md``, *The stage contract*; the SDK,
:mod:`outrider.checkpoint`, follows it for a Python stage)::

    $OUTRIDER_CHECKPOINT_DIR/            the stage's own directory
        ckpt-7/                          one checkpoint: a subdirectory (name not starting with ".")
            ...                          whatever the stage saves
            .complete                    created LAST: the checkpoint is complete
        ckpt-8/                          being written: no .complete yet, never read

The newest complete subdirectory (by its ``.complete``'s mtime, then name) is the
checkpoint. A complete one is never changed again; the agent removes those a newer one
supersedes. Before a resumed attempt starts, the checkpoint it resumes from is restored as
``$OUTRIDER_CHECKPOINT_DIR/resumed/`` (with its ``.complete``).

What the agent does with it, per stage::

    complete subdirectory seen (every CHECKPOINT_SCAN_S, and when the process ends)
      │ packed (deterministic tar: content-addressed) into the checkpoint store
      ▼ (STATE/checkpoints, diskcache: never evicted, FULL sync), seq = 1, 2, ...
    ┌──────────┐ upload (ArtifactService, unless the    ┌──────────┐ AgentMessage.checkpoints ┌──────────┐
    │ snapshot │──────────────────────────────────────▶│ uploaded │─────────────────────────▶│ reported │
    └──────────┘  scheduler has the bytes; background)  └──────────┘   (lease epoch, seq)      └──────────┘
                                                                      ack OK: accepted ──▶ older ones dropped
                                                                      ABORTED: stale epoch ──▶ kept, not reported

A result other than success waits for the stage's last checkpoint to be reported (and
acknowledged, bounded) before it is sent: the scheduler accepts a checkpoint only from
the current epoch, and the next attempt resumes from the latest it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.journal import Adopt, open_store
from agent.stage import Stage, StageKey, key_text
from agent.transfers import Transfers
from agent.uplink import Uplink
from outrider.protocol import ArtifactKind
from outrider.v1 import agent_pb2, common_pb2

__all__ = ["CHECKPOINT_SCAN_S", "MARKER", "CheckpointStore", "Checkpoints"]

log = logging.getLogger(__name__)

#: The file that marks a checkpoint subdirectory complete (created last).
MARKER = ".complete"
#: How often running stages' checkpoint directories are looked at.
CHECKPOINT_SCAN_S = 0.5
#: How long a result waits for its stage's last checkpoint to be acknowledged.
FLUSH_TIMEOUT_S = 30.0
#: Where a restored checkpoint goes, in ``$OUTRIDER_CHECKPOINT_DIR``.
RESUMED = "resumed"


def newest_complete(directory: Path) -> tuple[int, str] | None:
    """(mtime_ns of its marker, name) of the newest complete checkpoint in ``directory``."""
    best: tuple[int, str] | None = None
    try:
        if os.stat(directory).st_nlink == 2:
            # No subdirectory, so no checkpoint (what a short stage leaves): one stat, not
            # a directory listing. (A filesystem that does not count subdirectories says 1.)
            return None
        with os.scandir(directory) as it:
            for e in it:
                if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                    continue
                try:
                    st = os.stat(os.path.join(e.path, MARKER))
                except OSError:
                    continue
                cand = (st.st_mtime_ns, e.name)
                if best is None or cand > best:
                    best = cand
    except OSError:
        return None
    return best


def _meta_key(key: StageKey, seq: int) -> str:
    return f"meta\t{key_text(key)}\t{seq:012d}"


def _blob_key(key: StageKey, seq: int) -> str:
    return f"blob\t{key_text(key)}\t{seq:012d}"


class CheckpointStore:
    """Snapshots on disk (diskcache at ``root``): ``meta`` → Checkpoint bytes, ``blob`` → the
    packed tar, kept as a file in the store. Opened on first use; an index of what it
    holds is kept in memory (loaded once), so asking costs no disk access."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root.parent / (root.name + ".staging")
        self._cache: Any = None
        self._lock = threading.Lock()
        self._exists = (root / "cache.db").exists()
        self._index: dict[StageKey, dict[int, common_pb2.Checkpoint]] | None = None
        self._ilock = threading.RLock()  # the index is read on the event loop, changed in threads

    def _open(self) -> Any:
        with self._lock:
            if self._cache is None:
                self._cache = open_store(self.root)
                self.staging.mkdir(parents=True, exist_ok=True)
                self._exists = True
            return self._cache

    def exists(self) -> bool:
        """Whether anything was ever kept (no disk access: known at start, then tracked)."""
        return self._exists

    def _idx(self) -> dict[StageKey, dict[int, common_pb2.Checkpoint]]:
        with self._ilock:
            return self._load_index()

    def _load_index(self) -> dict[StageKey, dict[int, common_pb2.Checkpoint]]:
        if self._index is None:
            index: dict[StageKey, dict[int, common_pb2.Checkpoint]] = {}
            if self._exists:
                cache = self._open()
                for k in list(cache.iterkeys()):
                    if isinstance(k, str) and k.startswith("meta\t"):
                        try:
                            value = cache.get(k)
                            c = common_pb2.Checkpoint.FromString(value)
                        except Exception:  # unreadable: never used
                            continue
                        index.setdefault(_key_of(c), {})[c.seq] = c
            self._index = index
        return self._index

    def temp(self) -> Path:
        """A fresh path in the staging area (same filesystem as the store)."""
        self._open()
        return self.staging / f".part-{os.urandom(8).hex()}.tar"

    def add(self, ckpt: common_pb2.Checkpoint, tar: Path) -> None:
        """Keep ``tar`` (moved in, synced first) as checkpoint ``ckpt``. Blocking."""
        cache = self._open()
        with open(tar, "rb") as fh:
            os.fsync(fh.fileno())
        key = _key_of(ckpt)
        with cache.transact():
            cache.set(_blob_key(key, ckpt.seq), Adopt(tar, ckpt.size))
            cache.set(_meta_key(key, ckpt.seq), ckpt.SerializeToString())
        with self._ilock:
            self._idx().setdefault(key, {})[ckpt.seq] = ckpt

    def all(self) -> list[common_pb2.Checkpoint]:
        with self._ilock:
            return [c for by_seq in self._idx().values() for c in by_seq.values()]

    def of(self, run_id: str, task: str) -> list[common_pb2.Checkpoint]:
        """The kept checkpoints of every attempt of one task."""
        with self._ilock:
            return [c for k, by_seq in self._idx().items() if k[:2] == (run_id, task) for c in by_seq.values()]

    def latest(self, key: StageKey) -> common_pb2.Checkpoint | None:
        with self._ilock:
            mine = self._idx().get(key)
            return mine[max(mine)] if mine else None

    def path(self, ckpt: common_pb2.Checkpoint) -> Path | None:
        """The tar of a kept checkpoint (None if it is gone)."""
        cache = self._open()
        fh = cache.get(_blob_key(_key_of(ckpt), ckpt.seq), read=True)
        if fh is None:
            return None
        fh.close()
        return Path(fh.name)

    def find(self, digest: str) -> Path | None:
        """A kept checkpoint with these bytes, whichever attempt saved it."""
        for c in self.all():
            if c.digest == digest:
                return self.path(c)
        return None

    def drop(self, ckpt: common_pb2.Checkpoint) -> None:
        cache = self._open()
        key = _key_of(ckpt)
        with cache.transact():
            cache.delete(_meta_key(key, ckpt.seq))
            cache.delete(_blob_key(key, ckpt.seq))
        with self._ilock:
            mine = self._idx().get(key)
            if mine is not None:
                mine.pop(ckpt.seq, None)
                if not mine:
                    del self._idx()[key]


def _key_of(c: common_pb2.Checkpoint) -> StageKey:
    return (c.lease.run_id, c.lease.task, c.lease.epoch)


@dataclass(eq=False)
class _Tracked:
    stage: Stage
    directory: Path
    last: tuple[int, str] | None = None
    busy: asyncio.Future[None] | None = None
    seq: int = 0


class Checkpoints:
    """Snapshots, uploads, reports and restores stages' checkpoints (module docstring);
    the runner's :class:`~agent.runner.StageHooks`.

    Args:
        store: where snapshots are kept.
        transfers: uploads and downloads.
        uplink: where reports go.
        max_extract_bytes: the most a checkpoint restored from here may expand to; None: no ceiling.
    """

    def __init__(
        self, store: CheckpointStore, transfers: Transfers, uplink: Uplink, *, max_extract_bytes: int | None = None
    ) -> None:
        self.store = store
        self.max_extract_bytes = max_extract_bytes
        self.transfers = transfers
        self.uplink = uplink
        self._tracked: dict[StageKey, _Tracked] = {}
        self._seq: dict[StageKey, int] = {}
        #: Attempts whose stage dir holds a restored checkpoint (what is there is not new).
        self._restored: set[StageKey] = set()
        #: Reported, not acknowledged yet: re-sent on every fresh stream.
        self.unacked: dict[tuple[StageKey, int], common_pb2.Checkpoint] = {}
        self._acks: dict[tuple[StageKey, int], asyncio.Future[int]] = {}
        #: Uploads in flight, per attempt.
        self._uploads: dict[StageKey, set[asyncio.Future[None]]] = {}
        #: Kept but not uploaded (the link stayed down): tried again on the next stream.
        self._not_uploaded: list[common_pb2.Checkpoint] = []
        self._loop_task: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ the runner's hooks

    async def before_start(self, stage: Stage, checkpoint_dir: Path) -> None:
        """Restore the checkpoint this attempt resumes from: the newest complete one in the
        work dir a previous agent process ran it in (taken over after a crash; reported like
        a new one, since it may be newer than any kept), else this attempt's own latest
        kept, else the one the scheduler names (``resume_from``)."""
        dest = checkpoint_dir / RESUMED
        if stage.resume_dir is not None:
            old = stage.resume_dir / ".outrider" / "checkpoint"
            newest = newest_complete(old)
            if newest is not None:
                await asyncio.to_thread(shutil.copytree, old / newest[1], dest)
                log.info("%s/%s attempt %d resumes from checkpoint %s left in its work dir", *stage.key, newest[1])
                return
        own = self.store.latest(stage.key) if self.store.exists() else None
        if own is not None:
            self._seq[stage.key] = max(self._seq.get(stage.key, 0), own.seq)
            path = await asyncio.to_thread(self.store.path, own)
            if path is not None:
                await asyncio.to_thread(_unpack, path, dest, self.max_extract_bytes)
                self._restored.add(stage.key)
                log.info("%s/%s attempt %d resumes from its own checkpoint %d", *stage.key, own.seq)
                return
        ref = stage.assignment.resume_from
        if not ref.digest:
            return
        local = await asyncio.to_thread(self.store.find, ref.digest) if self.store.exists() else None
        if local is not None:
            await asyncio.to_thread(_unpack, local, dest, self.max_extract_bytes)
        else:
            await self.transfers.fetch(
                common_pb2.ArtifactRef(name="checkpoint", digest=ref.digest, kind=ArtifactKind.DIR.value), dest
            )
        (dest / MARKER).touch()
        self._restored.add(stage.key)
        log.info(
            "%s/%s attempt %d resumes from checkpoint %s (attempt %d, #%d)",
            *stage.key,
            ref.digest[:12],
            ref.lease.epoch,
            ref.seq,
        )

    def started(self, stage: Stage, checkpoint_dir: Path) -> None:
        """Watch the stage's checkpoint directory (what is there already is not new: a
        restored checkpoint, or one a taken-over stage wrote before)."""
        fresh = stage.key not in self._restored and not stage.pid
        self._restored.discard(stage.key)
        last = None if fresh else newest_complete(checkpoint_dir)
        t = _Tracked(stage, checkpoint_dir, last, seq=self._seq.get(stage.key, 0))
        self._tracked[stage.key] = t
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._scan_loop())

    async def ended(self, stage: Stage, checkpoint_dir: Path) -> None:
        """The process ended: take its last checkpoint before its work dir goes."""
        t = self._tracked.pop(stage.key, None)
        if t is None:
            return
        if t.busy is not None:
            with contextlib.suppress(Exception):
                await t.busy
        await self._snapshot(t)

    # ------------------------------------------------------------------ snapshots

    async def _scan_loop(self) -> None:
        try:
            while self._tracked:
                await asyncio.sleep(CHECKPOINT_SCAN_S)
                for t in list(self._tracked.values()):
                    if t.busy is None or t.busy.done():
                        t.busy = asyncio.ensure_future(self._snapshot(t))
        finally:
            self._loop_task = None

    async def _snapshot(self, t: _Tracked) -> None:
        """Keep the newest complete checkpoint of a stage if it is new; then upload and report it."""
        newest = newest_complete(t.directory)
        if newest is None or newest == t.last:
            return
        stage = t.stage
        src = t.directory / newest[1]
        tar = self.store.temp()
        try:
            digest, size = await asyncio.to_thread(_pack, src, tar)
        except Exception as exc:  # removed or changed under us: the next one will do
            tar.unlink(missing_ok=True)
            log.warning("checkpoint %s of %s/%s attempt %d not kept: %s", newest[1], *stage.key, exc)
            return
        t.last = newest
        kept = self.store.latest(stage.key) if self.store.exists() else None
        if kept is not None and kept.digest == digest:  # the same bytes as the last one kept
            tar.unlink(missing_ok=True)
            return
        t.seq = self._seq[stage.key] = max(t.seq, self._seq.get(stage.key, 0), kept.seq if kept else 0) + 1
        ckpt = common_pb2.Checkpoint(
            lease=stage.lease,
            digest=digest,
            size=size,
            kind=ArtifactKind.DIR.value,
            seq=t.seq,
            created_at=newest[0] / 1e9,
        )
        try:
            await asyncio.to_thread(self.store.add, ckpt, tar)
        except Exception as exc:
            tar.unlink(missing_ok=True)
            log.error("checkpoint of %s/%s attempt %d not kept: %s", *stage.key, exc)
            return
        await asyncio.to_thread(_remove_superseded, t.directory, newest)
        log.info("%s/%s attempt %d: checkpoint #%d kept (%d bytes)", *stage.key, t.seq, size)
        self._start_upload(ckpt)

    def _start_upload(self, ckpt: common_pb2.Checkpoint) -> None:
        key = (ckpt.lease.run_id, ckpt.lease.task, ckpt.lease.epoch)
        up = asyncio.ensure_future(self._upload_and_report(ckpt))
        mine = self._uploads.setdefault(key, set())
        mine.add(up)

        def finished(f: asyncio.Future[None]) -> None:
            mine.discard(f)
            if not mine and self._uploads.get(key) is mine:
                del self._uploads[key]

        up.add_done_callback(finished)

    async def _upload_and_report(self, ckpt: common_pb2.Checkpoint) -> None:
        key = (ckpt.lease.run_id, ckpt.lease.task, ckpt.lease.epoch)
        path = await asyncio.to_thread(self.store.path, ckpt)
        if path is None:
            return
        try:
            await self.transfers.upload(f"upload of checkpoint #{ckpt.seq}", path, ckpt.digest, ckpt.size, ckpt.kind)
        except Exception as exc:  # kept here; reported when the agent next connects (resend)
            log.warning("checkpoint #%d of %s/%s attempt %d not uploaded: %s", ckpt.seq, *key, exc)
            self._not_uploaded.append(ckpt)
            return
        self.unacked[(key, ckpt.seq)] = ckpt
        self.uplink.checkpoint(ckpt)

    # ------------------------------------------------------------------ reports

    def acked(self, ack: agent_pb2.CheckpointAck) -> None:
        """The scheduler recorded (or refused) a checkpoint report."""
        key = (ack.lease.run_id, ack.lease.task, ack.lease.epoch)
        ckpt = self.unacked.pop((key, ack.seq), None)
        fut = self._acks.pop((key, ack.seq), None)
        if fut is not None and not fut.done():
            fut.set_result(ack.code)
        if ack.code != 0:
            log.warning("scheduler refused checkpoint #%d of %s/%s attempt %d: %s", ack.seq, *key, ack.message)
            return
        if ckpt is not None:  # accepted: the ones before it are superseded
            old = [c for c in self.store.of(*key[:2]) if _key_of(c) == key and c.seq < ckpt.seq]
            if old:
                self._spawn(asyncio.to_thread(self._drop, old))

    def pending(self) -> list[common_pb2.Checkpoint]:
        """Reports to send again on a fresh stream (and uploads to try again)."""
        retry, self._not_uploaded = list(self._not_uploaded), []
        for ckpt in retry:
            self._start_upload(ckpt)
        return list(self.unacked.values())

    async def flush(self, stage: Stage, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Before a stage's result (other than success) is reported: its last checkpoint is
        uploaded and reported, and acknowledged (within ``timeout``)."""
        key = stage.key
        uploads = list(self._uploads.get(key, ()))
        if uploads:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*uploads, return_exceptions=True), timeout)
        waits = []
        for (k, seq), _ in list(self.unacked.items()):
            if k == key:
                fut = self._acks.get((k, seq))
                if fut is None:
                    fut = self._acks[(k, seq)] = asyncio.get_running_loop().create_future()
                waits.append(fut)
        if waits:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def done(self, stage: Stage, outcome: str) -> None:
        """A stage's end is dealt with: after a success its checkpoints are of no more use."""
        self._tracked.pop(stage.key, None)
        self._restored.discard(stage.key)
        self._seq.pop(stage.key, None)
        if outcome == "succeeded" and self.store.exists():
            old = [c for c in self.store.of(*stage.key[:2]) if c.lease.epoch <= stage.key[2]]
            if old:
                self._spawn(asyncio.to_thread(self._drop, old))

    def _drop(self, ckpts: list[common_pb2.Checkpoint]) -> None:
        for c in ckpts:
            self.store.drop(c)

    def _spawn(self, aw: Any) -> None:
        fut = asyncio.ensure_future(aw)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)


def _pack(src: Path, tar: Path) -> tuple[str, int]:
    from outrider.artifacts import pack_dir

    digest, size = pack_dir(src, tar)
    if not (src / MARKER).exists():  # removed while we packed: not the checkpoint it was
        raise FileNotFoundError(f"{src} went away while it was packed")
    return digest, size


def _unpack(tar: Path, dest: Path, max_bytes: int | None) -> None:
    from outrider.artifacts import unpack_dir

    if dest.exists():
        shutil.rmtree(dest)
    unpack_dir(tar, dest, max_bytes=max_bytes)
    (dest / MARKER).touch()


def _remove_superseded(directory: Path, newest: tuple[int, str]) -> None:
    """Remove the complete checkpoints older than ``newest`` (never one being written)."""
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for e in list(it):
            if e.name.startswith(".") or e.name == newest[1] or not e.is_dir(follow_symlinks=False):
                continue
            try:
                st = os.stat(os.path.join(e.path, MARKER))
            except OSError:
                continue
            if (st.st_mtime_ns, e.name) < newest:
                shutil.rmtree(e.path, ignore_errors=True)
