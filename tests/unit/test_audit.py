"""Tests for the audit log: the chain (scheduler.core.auditchain), its table in the SQLite
store (migration 6, gap-free seq in commit order), and the core component
(scheduler.core.audit) driven through the engine with fake clocks. What the store does with
the chain, and the engine tests, run on both backends (SQLite and PostgreSQL).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from outrider.pipeline import Pipeline
from scheduler.core import audit
from scheduler.core.audit import GENESIS, Action, AuditRecord, Chain, canonical, chain_hash, verify
from scheduler.core.txn import Txn
from scheduler.store import sqlite as sqlite_store
from scheduler.store.changes import Changes
from scheduler.store.sqlite import MIGRATIONS
from scheduler.store.sqlite import SqliteStore as Store
from tests.helpers.backends import Backend
from tests.unit.test_engine import MONO0, TTL, WALL0, Harness, assigned, h  # noqa: F401  (h: the fixture)
from tests.unit.test_store import _nan_task_update, make_run, read, with_store


def chain_of(n: int) -> list[AuditRecord]:
    c = Chain()
    return [c.append(1000 + i, f"spiffe://t/submitter/u{i % 2}", "submit", f"run-{i}", "ok", "") for i in range(n)]


# --------------------------------------------------------------------------- the chain


def test_canonical_encoding_is_netstrings_in_a_fixed_order() -> None:
    raw = canonical(1, 5, "a", "submit", "run-1", "ok", "", GENESIS)
    assert raw == b"1:1,1:5,1:a,6:submit,5:run-1,2:ok,0:," + b"64:" + GENESIS.encode() + b","
    assert chain_hash(1, 5, "a", "submit", "run-1", "ok", "", GENESIS) == hashlib.sha256(raw).hexdigest()
    # Lengths are of the UTF-8 bytes, so a field cannot run into the next.
    assert canonical(1, 5, "é", "", "", "", "", "")[:8] == b"1:1,1:5,"
    assert b"2:\xc3\xa9," in canonical(1, 5, "é", "", "", "", "", "")


def test_append_chains_from_genesis_and_an_intact_chain_verifies() -> None:
    recs = chain_of(5)
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:]))
    v = verify(recs)
    assert v.ok and v.records == 5 and v.head_seq == 5 and v.head_hash == recs[-1].hash
    assert verify([]).ok


@pytest.mark.parametrize("field,value", [("identity", "spiffe://t/admin/eve"), ("outcome", "PERMISSION_DENIED"),
                                         ("ts_us", 1), ("detail", "x"), ("action", "cancel")])
def test_a_changed_field_names_its_record(field: str, value: Any) -> None:
    recs = chain_of(6)
    recs[3] = dataclasses.replace(recs[3], **{field: value})
    v = verify(recs)
    assert not v.ok and v.first_broken == 4 and "changed" in v.why


def test_a_rehashed_record_breaks_the_next_link() -> None:
    recs = chain_of(6)
    r = dataclasses.replace(recs[2], identity="spiffe://t/admin/eve")
    recs[2] = dataclasses.replace(r, hash=chain_hash(r.seq, r.ts_us, r.identity, r.action, r.target, r.outcome,
                                                     r.detail, r.prev_hash))
    v = verify(recs)
    assert not v.ok and v.first_broken == 4 and "prev_hash" in v.why


def test_a_deleted_record_is_named_by_the_gap() -> None:
    recs = chain_of(6)
    del recs[2]  # seq 3
    v = verify(recs)
    assert not v.ok and v.first_broken == 4 and "expected seq 3" in v.why and "missing" in v.why


def test_reordered_records_are_found() -> None:
    recs = chain_of(6)
    recs[1], recs[2] = recs[2], recs[1]
    v = verify(recs)
    assert not v.ok and v.first_broken == 3


def test_a_cut_tail_is_found_against_the_head_written() -> None:
    recs = chain_of(6)
    assert verify(recs[:4]).ok  # alone, a shorter chain is consistent...
    v = verify(recs[:4], head=(6, recs[-1].hash))  # ...but not with the head the writer committed
    assert not v.ok and v.first_broken == 5 and "missing from the end" in v.why
    v = verify(recs, head=(6, "f" * 64))
    assert not v.ok and v.first_broken == 6


def test_chain_rewinds_to_a_mark() -> None:
    c = Chain()
    c.append(1, "a", "submit", "r", "ok", "")
    mark = c.mark()
    c.append(2, "a", "submit", "r", "ok", "")
    c.rewind(mark)
    assert c.append(3, "a", "submit", "r", "ok", "").seq == 2


# --------------------------------------------------------------------------- the store


def test_a_fresh_database_has_the_audit_table(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    cols = [r[1] for r in read(db, "PRAGMA table_info(audit)")]
    assert cols == ["seq", "ts_us", "identity", "action", "target", "outcome", "detail", "prev_hash", "hash"]
    assert read(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_an_older_database_is_upgraded_and_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    for script in MIGRATIONS[:5]:  # as the scheduler before the audit log left it
        conn.executescript(script)
    conn.execute("PRAGMA user_version=5")
    conn.execute("INSERT INTO artifacts VALUES (?, 3, 'file', 1.0)", ("a" * 64,))
    conn.commit()
    conn.close()

    async def body(store: Store) -> None:
        assert store.chain.committed == (0, GENESIS)
        ch = Changes()
        ch.audit(7, "scheduler", "lease_grant", "r/a#1", "ok", "")
        await store.commit(ch)

    with_store(db, body)
    assert read(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert read(db, "SELECT digest FROM artifacts") == [("a" * 64,)]
    assert read(db, "SELECT seq, prev_hash FROM audit") == [(1, GENESIS)]


def _audit(identity: str, action: str = "submit", target: str = "run-1") -> Changes:
    ch = Changes()
    ch.audit(1_000, identity, action, target, "ok", "")
    return ch


def test_records_are_chained_in_commit_order_and_survive_a_restart(backend: Backend) -> None:
    db = backend

    async def body(store: Any) -> None:
        await asyncio.gather(*(store.commit(_audit(f"id{i % 3}", target=f"run-{i}")) for i in range(10)))

    with_store(db, body)
    store = db.open()
    try:
        rows = list(store.audit_rows())
        assert [r.seq for r in rows] == list(range(1, 11))
        assert [r.target for r in rows] == [f"run-{i}" for i in range(10)]  # the order they were committed in
        assert verify(rows).ok
        assert store.chain.committed == (10, rows[-1].hash)  # the head is reloaded
    finally:
        store.close()

    async def more(store: Any) -> None:
        await store.commit(_audit("id9"))

    with_store(db, more)
    rows = db.read("SELECT seq, hash, prev_hash FROM audit WHERE seq >= 10 ORDER BY seq")
    assert [r[0] for r in rows] == [10, 11] and rows[1][2] == rows[0][1]  # chained on from the stored head
    s2 = db.open()
    try:
        assert verify(s2.audit_rows()).ok
    finally:
        s2.close()


def test_a_refused_change_gives_its_seq_back(backend: Backend) -> None:
    """A change the database refuses for its values is rolled back with its audit record: no gap."""
    db = backend
    run = make_run()

    async def body(store: Any) -> None:
        first = Changes()
        first.insert_run(run)
        await store.commit(first)
        ok1 = store.commit(_audit("a", target="before"))
        poisoned = Changes()
        poisoned.audit(1_000, "b", "retry", "poisoned", "ok", "")  # chained (seq 2) before the refusal
        poisoned.records += _nan_task_update(run).records
        bad = store.commit(poisoned)
        ok2 = store.commit(_audit("c", target="after"))
        await asyncio.gather(ok1, bad, ok2, return_exceptions=True)
        assert bad.exception() is not None and ok2.exception() is None

    with_store(db, body)
    assert db.read("SELECT seq, target FROM audit ORDER BY seq") == [(1, "before"), (2, "after")]
    store = db.open()
    try:
        assert verify(store.audit_rows()).ok
    finally:
        store.close()


def test_rows_stream_in_chunks_and_pages_filter(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "AUDIT_CHUNK", 3)
    if backend.name == "postgresql":
        from scheduler.store import postgres

        monkeypatch.setattr(postgres, "AUDIT_CHUNK", 3)
    db = backend

    async def body(store: Any) -> None:
        for i in range(8):
            ch = Changes()
            ch.audit(100 * i, f"id{i % 2}", "submit", f"run-{i}", "ok", "")
            await store.commit(ch)
        assert [r.seq for r in store.audit_rows()] == list(range(1, 9))
        assert [r.seq for r in store.audit_rows(after_seq=5)] == [6, 7, 8]
        assert [r.seq for r in store.audit_page(0, 0, "id1", 100)] == [2, 4, 6, 8]
        assert [r.seq for r in store.audit_page(0, 300, "", 2)] == [4, 5]
        assert [r.seq for r in store.audit_page(5, 0, "", 100)] == [6, 7, 8]

    with_store(db, body)


# --------------------------------------------------------------------------- the core component


def one_task() -> Pipeline:
    p = Pipeline("one")
    p.task("a", run="true")
    return p


def records(h: Harness) -> list[tuple[str, str, str, str]]:
    return [(r[0], r[1], r[2], r[3]) for r in h.db_one("SELECT identity, action, target, outcome FROM audit ORDER BY seq")]


def test_actions_are_recorded_with_their_identities_and_times(h: Harness) -> None:
    who = ["spiffe://test.ml/admin/root"]
    h.engine.core.caller = lambda: who[0]

    async def body() -> None:
        ch = h.connect("w1")
        run_id = await h.submit(one_task())
        await h.settle()
        assert "a" in assigned(ch)
        h.wall.t += 1.0
        h.engine.tick(mono=MONO0 + 3 * TTL)  # the lease expires: the scheduler's own action
        await h.settle()
        await h.engine.cancel(run_id)
        await h.engine.retry(run_id)
        h.engine.drain("w1")
        await h.settle()
        got = records(h)
        assert got[:4] == [
            ("alice", "submit", run_id, "ok"),
            ("scheduler", "lease_grant", f"{run_id}/a#1", "ok"),
            ("scheduler", "lease_expiry", f"{run_id}/a#1", "ok"),
            ("scheduler", "lease_grant", f"{run_id}/a#2", "ok"),
        ]
        rest = [g for g in got[2:] if g[1] in ("cancel", "retry", "drain")]
        assert rest == [
            (who[0], "cancel", run_id, "ok"),
            (who[0], "retry", run_id, "ok"),
            (who[0], "drain", "w1", "ok"),
        ]
        ts = h.db_one("SELECT ts_us FROM audit WHERE action='submit'")[0][0]
        assert ts == int(WALL0 * 1_000_000)
        v = await h.engine.audit.verify()
        assert v.ok and v.head_seq == len(got)

    h.run(body())


def test_a_residency_refusal_and_an_artifact_commit_are_recorded(h: Harness) -> None:
    from scheduler.core.model import Output

    h.engine.core.caller = lambda: "spiffe://test.ml/agent/w1"

    async def body() -> None:
        h.register("w1")
        digest = "b" * 64
        h.engine.residency.note(Output("out", digest, 1, "file", frozenset({"eu"})))
        assert h.engine.may_download("w1", digest) is not None
        await h.engine.record_artifact("c" * 64, 5, "file")
        await h.settle()
        got = h.db_one("SELECT identity, action, target, outcome, detail FROM audit ORDER BY seq")
        assert got[0][:4] == ("spiffe://test.ml/agent/w1", "residency_refusal", digest, "PERMISSION_DENIED")
        assert "zones" in got[0][4]
        assert got[1][:4] == ("spiffe://test.ml/agent/w1", "artifact_commit", "c" * 64, "ok")

    h.run(body())


def test_a_broken_chain_at_start_is_flagged_and_the_engine_serves_on(h: Harness, caplog: Any) -> None:
    async def body() -> None:
        h.connect("w1")
        for _ in range(3):
            await h.submit(one_task())
        await h.settle()

    h.run(body())
    h.backend.execute("UPDATE audit SET identity='spiffe://test.ml/admin/eve' WHERE seq=2")
    seen: list[Any] = []
    with caplog.at_level("ERROR"):
        h.restart()  # load() checks the whole chain
    h.engine.audit.on_verdict(seen.append)
    assert h.engine.audit.broken
    assert h.engine.audit.verdict is not None and h.engine.audit.verdict.first_broken == 2
    assert seen == [h.engine.audit.verdict]
    assert any("CHAIN BROKEN at record 2" in r.getMessage() for r in caplog.records)

    async def serves() -> None:
        run_id = await h.submit(one_task())  # still serving, still recording
        await h.settle()
        assert h.db_one("SELECT count(*) FROM audit WHERE target=?", (run_id,))[0][0] == 1
        v = await h.engine.audit.verify()
        assert not v.ok and v.first_broken == 2

    h.run(serves())


def test_verify_reads_the_stored_rows_not_memory(h: Harness) -> None:
    async def body() -> None:
        await h.submit(one_task())
        await h.submit(one_task())
        await h.settle()
        assert (await h.engine.audit.verify()).ok
        h.backend.execute("DELETE FROM audit WHERE seq=2")  # the last record, cut while running
        v = await h.engine.audit.verify()
        assert not v.ok and v.first_broken == 2 and "missing from the end" in v.why
        listed = await h.engine.audit.list(0, 0, "", 10)
        assert [r.seq for r in listed] == [1]

    h.run(body())


def test_record_bounds_its_fields() -> None:
    txn = Txn()
    audit.record(txn, 1.5, "i" * 1000, Action.SUBMIT, "t" * 1000, "o" * 1000, "d" * 5000)
    (_, params), = txn.changes.records
    assert params[0] == 1_500_000
    assert len(params[1]) == audit.MAX_FIELD and len(params[3]) == audit.MAX_FIELD
    assert len(params[4]) == audit.MAX_FIELD and len(params[5]) == audit.MAX_DETAIL
