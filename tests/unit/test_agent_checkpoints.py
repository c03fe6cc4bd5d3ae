"""The agent's side of checkpoints: only complete ones are kept (in a store that loses
nothing), superseded ones removed, each uploaded then reported with its lease epoch and seq,
acknowledged ones supersede older ones, a result waits for its last checkpoint, and a
resumed attempt finds its checkpoint restored. No scheduler: the transfers are fakes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoints import MARKER, RESUMED, Checkpoints, CheckpointStore, newest_complete
from agent.stage import Stage
from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2
from tests.helpers.agents import assignment


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


class FakeTransfers:
    """Uploads land in a dict (digest → bytes); a fetch unpacks from it."""

    def __init__(self) -> None:
        self.uploaded: dict[str, bytes] = {}
        self.fail = False

    async def upload(self, what: str, path: Path, digest: str, size: int, kind: str) -> None:
        if self.fail:
            raise ConnectionError("scheduler unreachable")
        self.uploaded[digest] = path.read_bytes()

    async def fetch(self, ref: common_pb2.ArtifactRef, dest: Path) -> None:
        from outrider.artifacts import unpack_dir

        tar = dest.parent / ".fetched.tar"
        tar.write_bytes(self.uploaded[ref.digest])
        unpack_dir(tar, dest)
        tar.unlink()


def write_checkpoint(ckdir: Path, name: str, content: str, complete: bool = True, mtime_ns: int | None = None) -> Path:
    d = ckdir / name
    d.mkdir(parents=True)
    (d / "state.txt").write_text(content)
    if complete:
        (d / MARKER).touch()
        if mtime_ns is not None:
            os.utime(d / MARKER, ns=(mtime_ns, mtime_ns))
    return d


def rig(tmp_path: Path) -> tuple[Checkpoints, FakeTransfers, Uplink, Path, Stage]:
    transfers, uplink = FakeTransfers(), Uplink()
    ck = Checkpoints(CheckpointStore(tmp_path / "store"), transfers, uplink)  # type: ignore[arg-type]
    stage = Stage(assignment("train"))
    ckdir = tmp_path / "work" / ".outrider" / "checkpoint"
    ckdir.mkdir(parents=True)
    return ck, transfers, uplink, ckdir, stage


async def settle(ck: Checkpoints) -> None:
    for fut in [f for fs in ck._uploads.values() for f in fs]:
        await fut


def test_only_complete_checkpoints_are_kept_and_the_newest_supersedes(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, transfers, uplink, ckdir, stage = rig(tmp_path)
        ck.started(stage, ckdir)
        write_checkpoint(ckdir, "ckpt-1", "epoch 1", mtime_ns=1_000)
        write_checkpoint(ckdir, "ckpt-2", "epoch 2", mtime_ns=2_000)
        write_checkpoint(ckdir, "ckpt-3", "half", complete=False)  # being written: never read
        await ck.ended(stage, ckdir)
        await settle(ck)
        kept = ck.store.latest(stage.key)
        assert kept is not None and kept.seq == 1 and kept.kind == "dir" and kept.lease == stage.lease
        assert sorted(p.name for p in ckdir.iterdir()) == ["ckpt-2", "ckpt-3"]  # the superseded one went
        assert kept.digest in transfers.uploaded  # uploaded before it was reported
        msg = uplink.take()
        assert msg is not None and [(c.seq, c.digest) for c in msg.checkpoints] == [(1, kept.digest)]
        # The store loses nothing, and a new process object finds it.
        again = CheckpointStore(tmp_path / "store")
        assert again.exists() and again.latest(stage.key) == kept
        path = again.path(kept)
        assert path is not None and path.read_bytes() == transfers.uploaded[kept.digest]

    run(scenario)


def test_an_acknowledged_checkpoint_supersedes_the_older_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, _, _, ckdir, stage = rig(tmp_path)
        ck.started(stage, ckdir)
        write_checkpoint(ckdir, "a", "1", mtime_ns=1_000)
        await ck._snapshot(ck._tracked[stage.key])
        write_checkpoint(ckdir, "b", "2", mtime_ns=2_000)
        await ck._snapshot(ck._tracked[stage.key])
        await settle(ck)
        assert sorted(c.seq for c in ck.store.all()) == [1, 2]
        assert sorted(seq for _, seq in ck.unacked) == [1, 2]
        # A fresh stream reports again what is not acknowledged.
        assert sorted(c.seq for c in ck.pending()) == [1, 2]
        ck.acked(agent_pb2.CheckpointAck(lease=stage.lease, seq=2))
        await asyncio.gather(*ck._background)
        assert [c.seq for c in ck.store.all()] == [2] and [seq for _, seq in ck.unacked] == [1]
        ck.acked(agent_pb2.CheckpointAck(lease=stage.lease, seq=1, code=10, message="stale epoch"))
        assert ck.unacked == {}  # refused for good: not reported again

    run(scenario)


def test_a_result_waits_for_its_last_checkpoint_to_be_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, _, _, ckdir, stage = rig(tmp_path)
        ck.started(stage, ckdir)
        write_checkpoint(ckdir, "last", "before the drain")
        await ck.ended(stage, ckdir)
        flush = asyncio.ensure_future(ck.flush(stage, timeout=10))
        await asyncio.sleep(0.05)
        assert not flush.done()  # reported, not acknowledged yet
        ck.acked(agent_pb2.CheckpointAck(lease=stage.lease, seq=1))
        await asyncio.wait_for(flush, 5)
        # Bounded: with no acknowledgement it gives up.
        other = Stage(assignment("other"))
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        ck.started(other, other_dir)
        write_checkpoint(other_dir, "x", "y")
        await ck.ended(other, other_dir)
        await asyncio.wait_for(ck.flush(other, timeout=0.1), 5)

    run(scenario)


def test_a_checkpoint_that_cannot_be_uploaded_is_kept_and_tried_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, transfers, uplink, ckdir, stage = rig(tmp_path)
        transfers.fail = True  # the scheduler is unreachable (or the lease lapsed meanwhile)
        ck.started(stage, ckdir)
        write_checkpoint(ckdir, "c", "kept anyway")
        await ck.ended(stage, ckdir)
        await settle(ck)
        assert ck.store.latest(stage.key) is not None and transfers.uploaded == {}
        assert uplink.take() is None  # nothing reported
        transfers.fail = False
        assert ck.pending() == []  # the upload is tried again with the next stream
        await settle(ck)
        assert len(transfers.uploaded) == 1 and len(ck.unacked) == 1

    run(scenario)


def test_a_resumed_attempt_finds_its_checkpoint_restored(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, transfers, _, ckdir, first = rig(tmp_path)
        ck.started(first, ckdir)
        write_checkpoint(ckdir, "c", "epoch 7")
        await ck.ended(first, ckdir)
        await settle(ck)
        kept = ck.store.latest(first.key)
        assert kept is not None
        # The next attempt, told by the scheduler to resume from it: found in the store here.
        second = Stage(assignment("train", epoch=2))
        second.assignment.resume_from.CopyFrom(kept)
        dest = tmp_path / "w2"
        dest.mkdir()
        await ck.before_start(second, dest)
        assert (dest / RESUMED / "state.txt").read_text() == "epoch 7" and (dest / RESUMED / MARKER).exists()
        assert newest_complete(dest) is not None
        # On another agent (an empty store) it is downloaded.
        other = Checkpoints(CheckpointStore(tmp_path / "elsewhere"), transfers, Uplink())  # type: ignore[arg-type]
        dest3 = tmp_path / "w3"
        dest3.mkdir()
        await other.before_start(second, dest3)
        assert (dest3 / RESUMED / "state.txt").read_text() == "epoch 7"
        # Restored, it is not new: it is not kept or reported again.
        other.started(second, dest3)
        await other.ended(second, dest3)
        assert other.store.latest(second.key) is None

    run(scenario)


def test_after_a_success_the_tasks_checkpoints_go(tmp_path: Path) -> None:
    async def scenario() -> None:
        ck, _, _, ckdir, stage = rig(tmp_path)
        ck.started(stage, ckdir)
        write_checkpoint(ckdir, "c", "x")
        await ck.ended(stage, ckdir)
        await settle(ck)
        ck.done(stage, "failed")
        assert ck.store.latest(stage.key) is not None  # a retry may resume from it
        ck.done(stage, "succeeded")
        await asyncio.gather(*ck._background)
        assert ck.store.all() == []

    run(scenario)


@pytest.fixture(autouse=True)
def _no_slow_scan(monkeypatch: pytest.MonkeyPatch) -> Any:
    import agent.checkpoints as mod

    monkeypatch.setattr(mod, "CHECKPOINT_SCAN_S", 3600.0)  # the tests snapshot explicitly
