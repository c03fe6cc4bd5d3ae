#!/usr/bin/env python3
"""Store benchmark: what one durable group commit costs on each backend.

The store alone (no scheduler, no gRPC): C changes queued in one loop turn, each a task
update, an attempt and two events (a completion's writes, roughly), committed by the
writer thread in as few transactions as group commit makes; repeated R times. SQLite on a
file in a temp dir (WAL, synchronous=FULL); PostgreSQL on a throwaway local server
(tests/helpers/pgserver.py) with fsync on, or on the server ``--database`` names.

    python bench/store.py                      # both backends, figures as median [min-max]
    python bench/store.py --json
    PGPASSWORD=… python bench/store.py --database postgresql://u@host/db   # an existing server

Figures per backend: changes_per_s (median of the rounds, with the range), commits per round
(how many transactions group commit made), ms_per_commit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.store.base import Store
from scheduler.store.changes import Changes
from tests.unit.test_store import make_run


def changes_for(i: int, run_id: str) -> Changes:
    run = make_run(run_id)
    t = run.tasks["a"]
    t.attempts, t.agent, t.started_at = i + 1, "w", float(i)
    ch = Changes()
    ch.update_task(t)
    ch.insert_attempt(t, float(i))
    ch.events([(2 * i + 1, float(i), run_id, "a", "running", i + 1, "w", ""),
               (2 * i + 2, float(i), run_id, "a", "succeeded", i + 1, "w", "")])
    return ch


def bench(open_store: Callable[[], Store], changes: int, rounds: int) -> dict[str, object]:
    async def main() -> dict[str, object]:
        store = open_store()
        store.start(asyncio.get_running_loop())
        try:
            first = Changes()
            first.insert_run(make_run("bench-run"))
            await store.commit(first)
            rates, commits, per_commit = [], [], []
            seq = 0
            for _ in range(rounds):
                before = store.commits
                t0 = time.perf_counter()
                futs = []
                for _ in range(changes):
                    futs.append(store.commit(changes_for(seq, "bench-run")))
                    seq += 1
                    if seq % 50 == 0:
                        await asyncio.sleep(0)  # let the loop hand groups to the writer as they come
                await asyncio.gather(*futs)
                dt = time.perf_counter() - t0
                n = store.commits - before
                rates.append(changes / dt)
                commits.append(n)
                per_commit.append(dt * 1000 / max(n, 1))
            return {
                "changes_per_s": round(statistics.median(rates)),
                "changes_per_s_range": [round(min(rates)), round(max(rates))],
                "commits_per_round": commits,
                "ms_per_commit": round(statistics.median(per_commit), 2),
                "ms_per_commit_range": [round(min(per_commit), 2), round(max(per_commit), 2)],
            }
        finally:
            store.close()

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Outrider store benchmark (group commit per backend)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--changes", type=int, default=5000, help="changes per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (the median is reported, with the range)")
    ap.add_argument("--database", default="", help="a postgresql:// URI to use instead of a throwaway server")
    args = ap.parse_args(argv)
    out: dict[str, object] = {}
    from scheduler.store.postgres import PostgresStore
    from scheduler.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory(prefix="outrider-bench-store-") as tmp:
        out["sqlite"] = bench(lambda: SqliteStore(Path(tmp) / "bench.db"), args.changes, args.rounds)
    if args.database:
        out["postgresql"] = bench(lambda: PostgresStore(args.database), args.changes, args.rounds)
    else:
        from tests.helpers.pgserver import PgServer, skip_reason

        why = skip_reason()
        if why:
            out["postgresql"] = f"skipped: {why}"
        else:
            server = PgServer(fsync=True)
            try:
                server.start()
                db = server.database()
                out["postgresql"] = bench(
                    lambda: PostgresStore(server.uri(db), password=server.password), args.changes, args.rounds)
            finally:
                server.stop()
    out["changes"], out["rounds"] = args.changes, args.rounds
    if args.json:
        print(json.dumps(out))
    else:
        for name in ("sqlite", "postgresql"):
            r = out[name]
            if isinstance(r, str):
                print(f"{name:11s} {r}")
                continue
            lo, hi = r["changes_per_s_range"]
            clo, chi = r["ms_per_commit_range"]
            print(f"{name:11s} {r['changes_per_s']:>8} changes/s [{lo}-{hi}]  {r['ms_per_commit']} ms/commit "
                  f"[{clo}-{chi}]  commits/round {r['commits_per_round']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
