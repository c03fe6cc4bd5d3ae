"""The agent's durable state: the journal (leases, outbox) in diskcache, and the outbox on it.

Results are on disk before they are sent and leave only when acknowledged; writes are
grouped (one sync per batch); nothing is pickled; diskcache's evicting, NORMAL-sync
defaults are overridden; what a killed process acknowledged is there for the next one.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from agent.journal import Journal, LeaseRecord, open_store
from agent.outbox import Outbox
from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2
from tests.helpers.agents import assignment

REPO_ROOT = Path(__file__).resolve().parents[2]


def completion(task: str, outcome: str = "succeeded") -> agent_pb2.Completion:
    return agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id="r1", task=task, epoch=1), outcome=outcome)


def test_the_stores_lose_nothing_and_keep_bytes_only(tmp_path: Path) -> None:
    cache = open_store(tmp_path / "s")
    assert cache.eviction_policy == "none"  # diskcache's default evicts past 1 GB
    assert cache.sqlite_synchronous == 2  # FULL; the default NORMAL may lose a commit on power loss
    assert cache.cull_limit == 0
    cache.set("k", b"\x00bytes")
    assert cache.get("k") == b"\x00bytes"
    with pytest.raises(TypeError, match="bytes only"):
        cache.set("obj", {"a": 1})  # would be pickled
    # A pickled value put there behind our back is never loaded.
    import diskcache

    diskcache.Cache(str(tmp_path / "s")).set("evil", {"a": 1})
    with pytest.raises(ValueError, match="unpickle"):
        cache.get("evil")
    cache.close()


def test_leases_and_results_survive_a_new_process_object(tmp_path: Path) -> None:
    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        assert not j.exists() and j.load() == ({}, {}, {})
        a = assignment("train", epoch=2)
        rec = LeaseRecord(a, started=1700.0, pid=4242, workdir="/w/x")
        await j.write({Journal.lease_key(("r1", "train", 2)): rec.encode(), "renewed": b'{"wall": 1.5, "ttl": 9}'})
        msg = agent_pb2.AgentMessage(completions=[completion("prep")], logs=[agent_pb2.LogChunk(data=b"bye")])
        await j.write({Journal.outbox_key(("r1", "prep", 1)): msg.SerializeToString()})
        j.close()
        leases, outbox, renewed = Journal(tmp_path / "journal").load()
        assert leases[("r1", "train", 2)].assignment == a
        assert (leases[("r1", "train", 2)].pid, leases[("r1", "train", 2)].workdir) == (4242, "/w/x")
        assert outbox[("r1", "prep", 1)] == msg
        assert renewed == {"wall": 1.5, "ttl": 9.0}

    asyncio.run(scenario())


def test_writes_are_grouped(tmp_path: Path) -> None:
    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        await asyncio.gather(*(j.write({f"k{i}": b"v"}) for i in range(200)))
        assert len(j.load()[0]) == 0  # (not lease or outbox keys)
        assert j.batches < 200 / 4, j.batches  # a burst shares its syncs

    asyncio.run(scenario())


def test_a_result_is_on_disk_before_it_is_sent_and_leaves_when_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path / "journal")
        uplink = Uplink()
        seen_on_disk: list[bool] = []
        real_complete = uplink.complete

        def complete(c: agent_pb2.Completion, logs: object = (), linger: bool = False) -> None:
            seen_on_disk.append(("r1", "a", 1) in Journal(tmp_path / "journal").load()[1])
            real_complete(c, logs)  # type: ignore[arg-type]

        uplink.complete = complete  # type: ignore[method-assign]
        box = Outbox(uplink, journal)
        lease_key = Journal.lease_key(("r1", "a", 1))
        await journal.write({lease_key: LeaseRecord(assignment("a")).encode()})
        await box.put(("r1", "a", 1), completion("a"), [agent_pb2.LogChunk(data=b"tail")], lease=True)
        assert seen_on_disk == [True]
        leases, outbox, _ = Journal(tmp_path / "journal").load()
        assert leases == {}  # the lease became the result in one transaction
        assert list(outbox[("r1", "a", 1)].logs)[0].data == b"tail"
        assert not box.empty.is_set()
        box.ack(agent_pb2.CompletionAck(lease=completion("a").lease))
        assert box.empty.is_set() and box.undelivered() == []
        journal.flush_later()  # (an acknowledgement rides with the next write, or within 0.2 s)
        assert journal.flush()
        assert Journal(tmp_path / "journal").load()[1] == {}

    asyncio.run(scenario())


def test_what_a_killed_process_wrote_is_there_for_the_next(tmp_path: Path) -> None:
    """The write returned: the process dies at once (SIGKILL), and the next one finds it."""
    code = f"""
import asyncio, os, signal
from pathlib import Path
from agent.journal import Journal
from outrider.v1 import agent_pb2, common_pb2

async def main():
    j = Journal(Path({str(tmp_path / "journal")!r}))
    c = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id="r1", task="t", epoch=1), outcome="failed")
    await j.write({{Journal.outbox_key(("r1", "t", 1)): agent_pb2.AgentMessage(completions=[c]).SerializeToString()}})
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    _, outbox, _ = Journal(tmp_path / "journal").load()
    assert outbox[("r1", "t", 1)].completions[0].outcome == "failed"


def test_a_damaged_record_is_dropped_not_fatal(tmp_path: Path) -> None:
    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        await j.write({Journal.outbox_key(("r1", "x", 1)): b"\xff\xff not protobuf"})
        leases, outbox, _ = j.load()
        assert outbox == {} and leases == {}

    asyncio.run(scenario())


def test_rows_are_diskcache_rows_and_big_values_stay_in_the_database(tmp_path: Path) -> None:
    """The journal writes diskcache's rows itself: diskcache reads them back, counts them,
    and a big value (a result with a long log tail) is kept in the database, whose commits
    are synced, never in a file of its own (diskcache does not sync those)."""

    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        big = b"x" * (1 << 20)
        await j.write({"a": b"1", "big": big, "gone": b"2"})
        await asyncio.gather(j.write({"a": b"3"}), j.write(deletes=["gone"]), j.write({"b": b"4"}, deletes=["b"]))
        await j.write({f"many{i}": b"m" for i in range(100)})  # more rows than one statement takes
        await j.write(deletes=[f"many{i}" for i in range(1, 100)])
        j.close()
        cache = open_store(tmp_path / "journal")
        assert cache.get("a") == b"3" and cache.get("big") == big and cache.get("many0") == b"m"
        assert cache.get("gone") is None and cache.get("b") is None  # a put then a delete: the last one counts
        assert len(cache) == 3 and cache.check() == []
        files = [p for p in (tmp_path / "journal").rglob("*") if p.is_file() and not p.name.startswith("cache.db")]
        assert files == []
        cache.close()

    asyncio.run(scenario())


def test_a_value_an_older_agent_kept_in_a_file_is_replaced_and_its_file_removed(tmp_path: Path) -> None:
    async def scenario() -> None:
        old = open_store(tmp_path / "journal")
        old.set("old", b"y" * (1 << 16))  # diskcache puts it in a file
        old.set("old2", b"z" * (1 << 16))
        old.close()
        assert len([p for p in (tmp_path / "journal").rglob("*.val")]) == 2
        j = Journal(tmp_path / "journal")
        await j.write({"old": b"small now"}, deletes=["old2"])
        j.close()
        cache = open_store(tmp_path / "journal")
        assert cache.get("old") == b"small now" and cache.get("old2") is None
        assert list((tmp_path / "journal").rglob("*.val")) == [] and cache.check() == []
        cache.close()

    asyncio.run(scenario())


async def _next_turn() -> None:
    """Let the event loop run one more turn (what was written for it in this one is committed)."""
    await asyncio.sleep(0)


def test_the_event_loop_commits_while_the_disk_is_fast_and_the_thread_when_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handoff to the writer thread costs more CPU than a fast commit: once the thread has
    seen FAST_RUN fast commits in a row, the loop commits itself (at its next turn, the write
    on disk before its future resolves, no thread involved); one slow commit on the loop
    sends the next ones to the thread again."""
    import agent.journal as journal_mod

    monkeypatch.setattr(journal_mod, "FAST_RUN", 3)
    monkeypatch.setattr(journal_mod, "FAST_S", 10.0)  # every commit of a test's disk counts as fast,
    monkeypatch.setattr(journal_mod, "SLOW_S", 10.0)  # and none as slow, until the test says so

    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        for i in range(3):  # the thread's: the journal does not know the disk yet
            fut = j.write({f"t{i}": b"x"})
            assert j._inflight == 1
            await fut
        fut = j.write({"inline": b"y"}, deletes=["t0"])
        assert j._inflight == 0 and j._group_handle is not None  # for the loop, not the thread
        await _next_turn()
        assert fut.done() and fut.exception() is None  # committed on the loop, synced
        j.write_later(deletes=["t1"])
        j.flush_later()  # (on the loop too, before it returns)
        cache = open_store(tmp_path / "journal")
        assert cache.get("inline") == b"y" and cache.get("t0") is None and cache.get("t1") is None
        cache.close()
        # The disk turns slow: that commit is still made (and synced), the next go to the thread.
        monkeypatch.setattr(journal_mod, "SLOW_S", -1.0)
        slow = j.write({"slow": b"z"})
        await _next_turn()
        assert slow.done() and not j._inline
        fut = j.write({"after": b"w"})
        assert j._inflight == 1
        await fut
        monkeypatch.setattr(journal_mod, "SLOW_S", 10.0)
        for i in range(3):
            await j.write({f"again{i}": b"x"})
        back = j.write({"back": b"v"})
        assert j._inflight == 0 and j._group_handle is not None
        await back
        j.close()

    asyncio.run(scenario())


def test_writes_in_one_turn_of_the_loop_are_one_transaction(tmp_path: Path) -> None:
    """On the loop as in the thread, a burst of results costs one sync: every write made in
    one turn of the event loop is committed together at the start of the next, each future
    resolved once that transaction is on disk (the issue's one sync per batch of results)."""

    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        j._inline = True  # as if the disk were known fast
        before = j.batches
        futs = [j.write({f"r{i}": b"x"}) for i in range(20)]
        j.write_later(deletes=["r0"])  # rides with the next write
        futs.append(j.write({"last": b"y"}))
        assert not any(f.done() for f in futs)
        await asyncio.gather(*futs)
        assert j.batches == before + 1 and j._thread is None
        j.close()
        cache = open_store(tmp_path / "journal")
        assert cache.get("r0") is None and cache.get("r19") == b"x" and cache.get("last") == b"y"
        cache.close()

    asyncio.run(scenario())


def test_a_write_on_the_loop_waits_for_the_threads_writes_before_it(tmp_path: Path) -> None:
    """Order: while the writer thread has writes in hand, later ones queue behind them,
    even when the loop would commit itself."""

    async def scenario() -> None:
        j = Journal(tmp_path / "journal")
        j._inline = True  # as if the disk were known fast
        j._inflight = 0
        first = j.write({"k": b"1"})  # on the loop
        await first
        j._inline = False
        second = j.write({"k": b"2"})  # in the thread
        j._inline = True
        third = j.write({"k": b"3"})  # the thread has one in hand: this one queues behind it
        assert not third.done()
        await asyncio.gather(second, third)
        j.close()
        cache = open_store(tmp_path / "journal")
        assert cache.get("k") == b"3"
        cache.close()

    asyncio.run(scenario())
