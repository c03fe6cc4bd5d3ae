#!/usr/bin/env python3
"""Scale benchmark: one scheduler, thousands of agents, SQLite and PostgreSQL.

For each backend and each agent count, a fresh ``outrider-scheduler`` process (its own temp
state dir; SQLite with WAL and synchronous=FULL as deployed, or a fresh database on a local
PostgreSQL with fsync on, tests/helpers/pgserver.py) and N lightweight agents: asyncio clients
in one or a few processes (bench/scale_agents.py), each agent with its own certificate issued
by the bench's CA and its own channel (TCP connection, TLS session), speaking the real agent
protocol over mTLS: Register, the work stream with one credit, a heartbeat on the stream every
heartbeat interval (times a random 0.9-1.0, as agent/session.py does), every assignment
completed at once (no process spawned: the point is the scheduler's load).

    python bench/scale.py                       # 100,500,2000 agents x sqlite,postgresql
    python bench/scale.py --json                # one object: {"rows": [...], ...}
    python bench/scale.py --quick --backend sqlite
    python bench/scale.py --repeat 3            # the whole matrix 3 times: median [min-max]
    python bench/scale.py --pki-dir /tmp/scale-pki --backend sqlite --agents 2000 --heartbeat-interval 1
                                                # more heartbeat load; certificates kept for the next run

Figures, each row (one backend, one agent count), over a window of ``--hold`` seconds that
starts one heartbeat interval after every agent's stream is open:

  heartbeats_per_s           heartbeats the scheduler answered (the answer received on the
                             stream), per second, against heartbeats_expected_per_s: streams
                             open / (0.95 x interval), the mean rate of the real agent's timer
  heartbeats_sent_per_s      what the clients sent (below expected: the clients fell behind)
  hb_rtt_p50_ms/_p99_ms      heartbeat sent -> its answer received (client_time echoed)
  rss_per_agent_kb           (scheduler RSS with N agents connected - RSS before any), / N,
                             read just before the window's dispatch load starts
  dispatch_p50_ms/_p99_ms    one-task pipelines submitted at --rate per second through the
                             control API during the window: the task's "ready" event (the
                             scheduler's wall clock, from the run's events in the database) ->
                             the assignment received by an agent (wall clock, same machine)
  scheduler_cpu_pct          the scheduler process's CPU over the window (100 = one core)
  scheduler_cpu_us_per_hb    that CPU per heartbeat answered (the window's dispatches included)
  client_cpu_pct             the client processes' CPU over the window, together
  client_lag_p99_ms          how late the client processes' event loops woke up (a busy client
                             loop delays its heartbeats: then the clients, not the scheduler, bend)
  errors                     failed Register/Connect, RPC failures, streams ended by the
                             scheduler, failed submits, tasks never assigned
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outrider import pki
from outrider.client import Client
from outrider.errors import OutriderError
from outrider.localcluster import Daemon, wait_for
from outrider.pipeline import Pipeline
from outrider.tls import pki_paths

HERE = Path(__file__).resolve().parent
PREFIX = "scale-"
#: What the real agent's heartbeat timer waits on average: interval x uniform(0.9, 1.0).
MEAN_BEAT_FACTOR = 0.95
#: Figures given as median [min-max] when the matrix runs more than once.
SPREAD_KEYS = (
    "heartbeats_per_s",
    "hb_rtt_p99_ms",
    "rss_per_agent_kb",
    "dispatch_p50_ms",
    "dispatch_p99_ms",
    "scheduler_cpu_pct",
    "scheduler_cpu_us_per_hb",
    "client_cpu_pct",
    "client_lag_p99_ms",
    "connect_s",
)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def ensure_certs(pki_dir: Path, count: int) -> tuple[int, float]:
    """The CA and ``count`` agent certificates under ``pki_dir``, issuing only those missing.
    Returns how many were issued now and how long that took."""
    t0 = time.perf_counter()
    if not (pki_dir / "ca.crt").exists():
        pki.init_ca(pki_dir, "outrider.local")
    issued = 0
    for i in range(count):
        name = f"{PREFIX}{i:05d}"
        if not pki_paths(pki_dir, name)[1].exists():
            pki.issue(pki_dir, "agent", name)
            issued += 1
    if not pki_paths(pki_dir, "scale-submitter")[1].exists():
        pki.issue(pki_dir, "submitter", "scale-submitter")
    return issued, time.perf_counter() - t0


class Lines:
    """Lines from a child's stdout, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client process {self.proc.pid}: no answer within {timeout:g}s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"client process {self.proc.pid} exited ({self.proc.wait()})")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return dict(json.loads(line))


class Clients:
    """The agent client processes for one row."""

    def __init__(self, address: str, pki_dir: Path, agents: int, procs: int, log_dir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lines: list[Lines] = []
        share = math.ceil(agents / procs)
        for p in range(procs):
            first, count = p * share, min(share, agents - p * share)
            if count <= 0:
                break
            argv = [sys.executable, str(HERE / "scale_agents.py"), "--address", address, "--pki", str(pki_dir),
                    "--prefix", PREFIX, "--first", str(first), "--count", str(count)]  # fmt: skip
            with (log_dir / f"client-{p}.log").open("ab") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            self.procs.append(proc)
            self.lines.append(Lines(proc))

    def ask(self, command: str | None, timeout: float = 60.0) -> list[dict[str, Any]]:
        if command is not None:
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write(command.encode() + b"\n")
                proc.stdin.flush()
        return [lines.read(timeout) for lines in self.lines]

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.procs:
            t = psutil.Process(proc.pid).cpu_times()
            total += t.user + t.system
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(b"stop\n")
                    proc.stdin.close()
                    proc.wait(30)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


def summed(marks: list[dict[str, Any]], key: str) -> int:
    return sum(int(m[key]) for m in marks)


class Backend:
    """Where a row's scheduler keeps its state: a SQLite file, or a fresh PostgreSQL database."""

    def __init__(self, name: str, pg: Any = None) -> None:
        self.name = name
        self.pg = pg
        self.database = ""

    def fresh(self, state_dir: Path) -> tuple[str, dict[str, str]]:
        """The scheduler's --database value for a new row, and the environment it needs."""
        if self.pg is None:
            self.database = str(state_dir / "scale.db")
            return self.database, {}
        self.database = self.pg.uri(self.pg.database())
        return self.database, {"PGPASSWORD": self.pg.password}

    def ready_times(self) -> dict[tuple[str, str], float]:
        """Each task's first "ready" event time, from the run's events."""
        sql = "SELECT run_id, task, min(ts) FROM events WHERE state = 'ready' GROUP BY run_id, task"
        if self.pg is None:
            conn = sqlite3.connect(self.database)
            try:
                rows = conn.execute(sql).fetchall()
            finally:
                conn.close()
        else:
            import psycopg

            with psycopg.connect(self.database, password=self.pg.password, autocommit=True) as pconn:
                rows = pconn.execute(sql).fetchall()
        return {(r, t): float(ts) for r, t, ts in rows}


def one_task(i: int) -> Pipeline:
    p = Pipeline(f"scale-{i}")
    p.task("t", run=["true"])
    return p


def start_scheduler(root: Path, pki_dir: Path, backend: Backend, interval: float) -> tuple[Daemon, str]:
    state = root / "scheduler"
    state.mkdir(parents=True)
    database, extra_env = backend.fresh(state)
    ready = root / "scheduler.ready"
    argv = [sys.executable, "-m", "scheduler.main", "--listen", "127.0.0.1:0", "--state-dir", str(state),
            "--pki-dir", str(pki_dir), "--ready-file", str(ready), "--database", database,
            "--heartbeat-interval", f"{interval:g}s", "--lease-ttl", f"{max(15.0, 5 * interval):g}s",
            "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    d = Daemon("scheduler", argv, root / "scheduler.log", env, cwd=str(HERE.parent))
    d.start()

    def is_ready() -> str:
        if not d.alive():
            raise RuntimeError(f"the scheduler exited ({d.proc.returncode if d.proc else '?'}):\n{d.tail()}")
        return ready.read_text().strip() if ready.exists() else ""

    try:
        return d, str(wait_for(is_ready, 60, "the scheduler's ready file"))
    except BaseException:
        d.stop()
        raise


def run_row(backend: Backend, agents: int, args: argparse.Namespace, pki_dir: Path, work: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"{backend.name}-{agents}-", dir=work))
    procs = args.client_procs or max(1, math.ceil(agents / 1000))
    row: dict[str, Any] = {"backend": backend.name, "agents": agents, "client_procs": procs}
    sched, address = start_scheduler(root, pki_dir, backend, args.heartbeat_interval)
    clients: Clients | None = None
    try:
        sp = psutil.Process(sched.pid)
        time.sleep(1.0)  # let start-up garbage settle before the baseline
        rss0 = sp.memory_info().rss
        t0 = time.monotonic()
        clients = Clients(address, pki_dir, agents, procs, root)
        up = clients.ask(None, timeout=600)
        row["connect_s"] = round(time.monotonic() - t0, 2)
        failed = sum(u["failed"] for u in up)
        # One heartbeat interval: every agent's timer has fired once (their phases are spread).
        time.sleep(args.heartbeat_interval)
        a = clients.ask("mark")
        rss_n = sp.memory_info().rss
        ta, cpu_a, ccpu_a = time.monotonic(), sp.cpu_times(), clients.cpu_s()

        ca, cert, key = pki_paths(pki_dir, "scale-submitter")
        submitted: list[str] = []
        submit_errors = 0
        with Client(address, str(ca), str(cert), str(key)) as client:
            n = int(args.hold * args.rate)
            for i in range(n):
                delay = ta + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    submitted.append(client.submit(one_task(i)).run_id)
                except OutriderError:
                    submit_errors += 1
            end = ta + args.hold
            if end > time.monotonic():
                time.sleep(end - time.monotonic())
        b = clients.ask("mark")
        tb, cpu_b, ccpu_b = time.monotonic(), sp.cpu_times(), clients.cpu_s()
        window = tb - ta

        # Every submitted task assigned (a bounded wait; what never comes is an error).
        deadline = time.monotonic() + 30
        while summed(clients.ask("mark"), "assigned") < len(submitted) and time.monotonic() < deadline:
            time.sleep(0.2)
        got: dict[tuple[str, str], float] = {}
        for reply in clients.ask("collect"):
            for run_id, task, ts in reply["assignments"]:
                got.setdefault((run_id, task), float(ts))
        ready = backend.ready_times()
        lat = [(got[k] - ready[k]) * 1000 for k in ((r, "t") for r in submitted) if k in got and k in ready]
        undispatched = sum(1 for r in submitted if (r, "t") not in got)

        streams = summed(b, "streams")
        hb_acked = summed(b, "hb_acked") - summed(a, "hb_acked")
        sched_cpu = (cpu_b.user + cpu_b.system) - (cpu_a.user + cpu_a.system)
        rtts = [x for m in b for x in m["rtt_ms"]]
        rpc_errors = summed(b, "rpc_errors") + summed(b, "disconnects")
        row.update(
            streams=streams,
            connect_failed=failed,
            heartbeats_per_s=round(hb_acked / window, 1),
            heartbeats_sent_per_s=round((summed(b, "hb_sent") - summed(a, "hb_sent")) / window, 1),
            heartbeats_expected_per_s=round(streams / (MEAN_BEAT_FACTOR * args.heartbeat_interval), 1),
            hb_rtt_p50_ms=round(pct(rtts, 0.5), 2),
            hb_rtt_p99_ms=round(pct(rtts, 0.99), 2),
            rss_idle_mb=round(rss0 / 2**20, 1),
            rss_mb=round(rss_n / 2**20, 1),
            rss_per_agent_kb=round((rss_n - rss0) / 1024 / agents, 1),
            dispatched=len(lat),
            dispatch_p50_ms=round(pct(lat, 0.5), 2),
            dispatch_p99_ms=round(pct(lat, 0.99), 2),
            undispatched=undispatched,
            scheduler_cpu_pct=round(100 * sched_cpu / window, 1),
            client_cpu_pct=round(100 * (ccpu_b - ccpu_a) / window, 1),
            # The scheduler's CPU over the window per heartbeat answered (the window's few
            # dispatches included): what one more agent costs, and so where one core runs out.
            scheduler_cpu_us_per_hb=round(1e6 * sched_cpu / max(1, hb_acked), 1),
            client_lag_p99_ms=round(max(m["lag_p99_ms"] for m in b), 1),
            rpc_errors=rpc_errors,
            submit_errors=submit_errors,
            errors=failed + rpc_errors + submit_errors + undispatched,
        )
        first = [e for m in b for e in m["first_errors"]]
        if first:
            row["first_errors"] = first[:5]
        return row
    except BaseException:
        print(f"{backend.name}, {agents} agents failed; the scheduler's log ends:\n{sched.tail()}", file=sys.stderr)
        raise
    finally:
        if clients is not None:
            clients.stop()
        sched.stop()
        shutil.rmtree(root / "scheduler", ignore_errors=True)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several runs of it: each number the median, SPREAD_KEYS with their range."""
    row = dict(runs[-1])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("agents", "client_procs"):
            values = [r[key] for r in runs if not (isinstance(r[key], float) and math.isnan(r[key]))]
            row[key] = round(statistics.median(values), 2) if values else float("nan")
    if len(runs) > 1:
        row["range"] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in SPREAD_KEYS}
        row["runs"] = len(runs)
        row["errors"] = sum(r["errors"] for r in runs)  # every error of every run
    return row


def fmt(row: dict[str, Any], key: str) -> str:
    v = row[key]
    if "range" in row and key in row["range"]:
        lo, hi = row["range"][key]
        return f"{v:g} [{lo:g}-{hi:g}]"
    return f"{v:g}"


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("backend", "backend"), ("agents", "agents"), ("streams", "streams"),
            ("hb/s answered", "heartbeats_per_s"), ("hb/s expected", "heartbeats_expected_per_s"),
            ("hb rtt p99 ms", "hb_rtt_p99_ms"), ("RSS/agent KiB", "rss_per_agent_kb"),
            ("dispatch p50 ms", "dispatch_p50_ms"), ("dispatch p99 ms", "dispatch_p99_ms"),
            ("sched CPU %", "scheduler_cpu_pct"), ("sched CPU us/hb", "scheduler_cpu_us_per_hb"),
            ("client CPU %", "client_cpu_pct"), ("client lag p99 ms", "client_lag_p99_ms"),
            ("errors", "errors")]  # fmt: skip
    cells = [[h for h, _ in cols]] + [[r[k] if isinstance(r[k], str) else fmt(r, k) for _, k in cols] for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(cols))]
    for c in cells:
        print("  ".join(str(v).rjust(w) for v, w in zip(c, widths, strict=True)))


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--agents {text!r}: give a comma-separated list of agent counts, e.g. 100,500,2000") from None
    if not counts or any(n < 1 or n > 99999 for n in counts):
        raise SystemExit(f"--agents {text!r}: each count must be between 1 and 99999")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="100,500,2000", help="agent counts, comma-separated")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="a small run (20,50 agents, short window) for a test")
    ap.add_argument("--json", action="store_true", help="print one JSON object with a rows list")
    ap.add_argument("--heartbeat-interval", type=float, default=3.0, help="the scheduler's, seconds (default 3)")
    ap.add_argument("--hold", type=float, default=15.0, help="seconds of measured load per row")
    ap.add_argument("--rate", type=float, default=10.0, help="one-task pipelines submitted per second")
    ap.add_argument("--client-procs", type=int, default=0, help="agent client processes (0: one per 1000 agents)")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole matrix this many times")
    ap.add_argument("--work-dir", default="", help="where the temp dir goes (default: the system's)")
    ap.add_argument(
        "--pki-dir",
        default="",
        help="keep the CA and agent certificates here, for the next run (default: in the temp dir)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.agents = "20,50" if args.agents == ap.get_default("agents") else args.agents
        args.hold, args.rate, args.heartbeat_interval = 3.0, 5.0, 1.0
    counts = parse_counts(args.agents)
    if args.heartbeat_interval <= 0 or args.hold <= 0 or args.rate <= 0 or args.repeat < 1 or args.client_procs < 0:
        raise SystemExit(
            "--heartbeat-interval, --hold and --rate must be positive, --repeat at least 1, --client-procs 0 or more"
        )
    out: dict[str, Any] = {"rows": [], "skipped": []}
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(tempfile.mkdtemp(prefix="outrider-scale-", dir=args.work_dir or None))
    pg = None
    try:
        pki_dir = Path(args.pki_dir).resolve() if args.pki_dir else work / "pki"
        issued, secs = ensure_certs(pki_dir, max(counts))
        out["certs_issued"], out["cert_issue_s"] = issued, round(secs, 1)
        say(f"issued {issued} agent certificates in {secs:.1f}s (cached in {pki_dir})")
        backends = [Backend("sqlite")] if args.backend in ("sqlite", "both") else []
        if args.backend in ("postgresql", "both"):
            from tests.helpers.pgserver import PgServer, skip_reason

            reason = skip_reason()
            if reason is None:
                try:
                    pg = PgServer(fsync=True).start()
                except RuntimeError as exc:
                    reason = f"PostgreSQL did not start: {str(exc).splitlines()[0]}"
            if pg is not None:
                backends.append(Backend("postgresql", pg))
            else:
                say(f"postgresql rows skipped: {reason}")
                out["skipped"].append({"backend": "postgresql", "reason": reason})
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in range(args.repeat):
            for be in backends:
                for n in counts:
                    row = run_row(be, n, args, pki_dir, work)
                    runs.setdefault((be.name, n), []).append(row)
                    say(f"run {r + 1}/{args.repeat} {json.dumps(row, sort_keys=True)}")
        out["rows"] = [combine(v) for v in runs.values()]
        out.update(heartbeat_interval_s=args.heartbeat_interval, hold_s=args.hold, rate_per_s=args.rate,
                   repeat=args.repeat, cpus=os.cpu_count())  # fmt: skip
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    elif out["rows"]:
        print_table(out["rows"])
    else:
        print("no rows: no backend could run (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
