"""``outrider``: the client and admin command line.

A person reads the default output; a script reads ``--json``, whose shape is a
stable contract. Exit codes tell outcomes apart: 0 success; 1 the watched run did
not succeed (``watch``, ``submit --watch``, ``retry --watch``) or ``audit verify``
found a broken chain; 2 a usage error, a config or PKI problem, or any error not
classed below; 3 an invalid request (a spec that fails validation, a retry with
nothing to retry); 4 permission refused or not authenticated; 5 not found; 6 the
scheduler unreachable or timed out; 7 refused for load or a conflict; 130 Ctrl-C.
The status → exit code table is :data:`outrider.errors.EXIT_CODES`. An error prints
``outrider: error: MESSAGE`` on stderr; under ``--json`` also one line on stdout,
``{"error": {"code": STATUS, "message": MESSAGE, "exit_code": N}}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from outrider import cli_agents, cli_errors, cli_metrics, cli_observe
from outrider.errors import OutriderError

TERMINAL = ("succeeded", "failed", "cancelled")
#: How long a watch keeps trying to reconnect to a scheduler that went away.
RECONNECT_FOR_S = 300.0


# ---------------------------------------------------------------------------- output helpers


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _dur(start: float, end: float) -> str:
    if not start:
        return "-"
    secs = (end or time.time()) - start
    return f"{secs * 1000:.0f}ms" if secs < 1 else f"{secs:.1f}s" if secs < 120 else f"{secs / 60:.1f}m"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def run_json(run: Any) -> dict[str, Any]:
    """The stable ``--json`` shape of a run (``status``, ``watch`` end, ``cancel``, ``retry``)."""
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "state": run.state,
        "submitter": run.submitter,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "code_digest": run.code_digest,
        "tasks": {
            t.name: {
                "state": t.state,
                "attempts": t.attempts,
                "agent": t.agent,
                "outputs": {o.name: o.digest for o in t.outputs},
                "output_sizes": {o.name: o.size for o in t.outputs},
                "error": t.error,
                "exit_code": t.exit_code,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "history": [
                    {
                        "attempt": a.attempt,
                        "agent": a.agent,
                        "state": a.state,
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "exit_code": a.exit_code,
                        "error": a.error,
                    }
                    for a in t.history
                ],
                "checkpoint": checkpoint_json(t.checkpoint) if t.HasField("checkpoint") else None,
                "resumed_from": checkpoint_json(t.resumed_from) if t.HasField("resumed_from") else None,
            }
            for t in run.tasks
        },
    }


def checkpoint_json(c: Any) -> dict[str, Any]:
    """A checkpoint in ``--json``: the attempt (epoch) that saved it and its bytes."""
    return {
        "digest": c.digest,
        "epoch": c.lease.epoch,
        "seq": c.seq,
        "size": c.size,
        "kind": c.kind,
        "created_at": c.created_at,
    }


def print_run(run: Any) -> None:
    print(
        f"run {run.run_id}  pipeline {run.pipeline}  {run.state.upper()}  "
        f"submitted {_ts(run.created_at)}  took {_dur(run.created_at, run.finished_at)}"
    )
    rows = []
    for t in run.tasks:
        detail = t.error or ", ".join(f"{o.name}={o.digest[:12]}" for o in t.outputs)
        rows.append((t.name, t.state, str(t.attempts), t.agent or "-", _dur(t.started_at, t.finished_at), detail))
    _table(rows, ("TASK", "STATE", "ATTEMPTS", "AGENT", "TIME", "OUTPUTS / ERROR"))
    for t in run.tasks:  # what became of each earlier attempt, and what a task resumed from
        earlier = [a for a in t.history if a.state != "running" and (a.state != "succeeded" or len(t.history) > 1)]
        if len(t.history) < 2 and not t.HasField("checkpoint"):
            continue
        print(f"  {t.name}:")
        for a in earlier:
            why = f": {a.error}" if a.error else ""
            print(f"    attempt {a.attempt} on {a.agent or '-'} {a.state}{why}")
        if t.HasField("resumed_from"):
            c = t.resumed_from
            print(f"    attempt {t.attempts} resumed from checkpoint {c.seq} of attempt {c.lease.epoch}", end="")
            print(f" ({c.digest[:12]})")
        if t.HasField("checkpoint"):
            c = t.checkpoint
            print(f"    latest checkpoint: {c.seq} of attempt {c.lease.epoch} ({c.digest[:12]}, {_bytes(c.size)})")


# ---------------------------------------------------------------------------- verbs


def _client(args: argparse.Namespace) -> Any:
    """A client, with the verb's RUN and DIGEST arguments made whole if given as unique prefixes."""
    return cli_observe.connect(args)


def _load(path: str) -> Any:
    from outrider.pipeline import load_pipeline

    return load_pipeline(path)


def plan_json(tp: Any) -> dict[str, Any]:
    """The stable ``--json`` shape of one task's placement facts (``plan``, ``explain``)."""
    return {
        "agents_considered": tp.agents_considered,
        "agents_feasible": len(tp.feasible_agents),
        "feasible": list(tp.feasible_agents),
        "rejection_counts": dict(tp.rejection_counts),
        "passing": dict(tp.passing),
        "rejections": dict(tp.rejections),
        "candidates": [
            {
                "agent": c.agent,
                "score": round(c.score, 4),
                "breakdown": {k: round(v, 4) for k, v in c.breakdown.items()},
            }
            for c in tp.candidates
        ],
        "suggestions": list(tp.suggestions),
        "residency": list(tp.residency),
        "residency_conflicts": list(tp.residency_conflicts),
    }


def print_plan(tp: Any, indent: str = "") -> None:
    ok = len(tp.feasible_agents)
    mark = "ok " if ok else "!! "
    names = list(tp.feasible_agents)
    shown = f" ({', '.join(names[:10])}{', …' if len(names) > 10 else ''})" if names else ""
    print(
        f"{indent}{mark}{tp.task}: {ok} of {tp.agents_considered} agents fit{shown}"
        + (f"; zones {','.join(tp.residency)}" if tp.residency else "")
    )
    if tp.rejection_counts:
        print(
            f"{indent}      rejected: "
            + ", ".join(f"{reason} ×{n}" for reason, n in sorted(tp.rejection_counts.items(), key=lambda kv: -kv[1]))
        )
    for c in tp.candidates[:3]:
        terms = ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.breakdown.items()))
        print(f"{indent}      {c.agent}: score {c.score:.2f} ({terms})")
    for conflict in tp.residency_conflicts:
        print(f"{indent}      residency conflict: {conflict}")
    for s in tp.suggestions:
        print(f"{indent}      to fit: {s}")
    for agent, why in sorted(tp.rejections.items())[:10]:
        print(f"{indent}      {agent}: {why}")
    if len(tp.rejections) > 10:
        print(f"{indent}      … and {len(tp.rejections) - 10} more (see --json)")


def cmd_plan(args: argparse.Namespace) -> int:
    pipeline = _load(args.file)
    with _client(args) as client:
        resp = client.plan(pipeline)
    if args.json:
        _json({"pipeline": pipeline.name, "tasks": {tp.task: plan_json(tp) for tp in resp.tasks}})
        return 0
    print(f"pipeline {pipeline.name}: {len(resp.tasks)} tasks, valid")
    for tp in resp.tasks:
        print_plan(tp)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        resp = client.explain(args.run, args.task)
    if args.json:
        _json(
            {
                "run_id": resp.run_id,
                "task": resp.task,
                "state": resp.state,
                "reason": resp.reason,
                "message": resp.message,
                "until": resp.until,
                "agent": resp.agent,
                "plan": plan_json(resp.plan),
            }
        )
        return 0
    print(f"{resp.task} ({resp.state}): {resp.reason}")
    print(f"  {resp.message}")
    print_plan(resp.plan, indent="  ")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    pipeline = _load(args.file)
    with _client(args) as client:
        if args.watch:
            events = client.submit_and_watch(
                pipeline, strict=args.strict, reconnect_for=RECONNECT_FOR_S, on_reconnect=_reconnecting
            )
            first = next(events)
            _announce(first.run_id, list(first.warnings), args.json)
            return _watch(client, first.run_id, args.json, quiet=args.json, events=itertools.chain([first], events))
        res = client.submit(pipeline, strict=args.strict)
        _announce(res.run_id, res.warnings, args.json)
    return 0


def _announce(run_id: str, warnings: list[str], as_json: bool) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if as_json:
        print(json.dumps({"run_id": run_id, "warnings": warnings}), flush=True)
    else:
        print(run_id, flush=True)


def cmd_runs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs, others = client.list_runs_counted(limit=args.limit, state=args.state or "")
    # Other submitters' runs are counted, never shown; under --json the list keeps its shape
    # and the count goes to stderr.
    note = f"({others} run{'s' if others != 1 else ''} of other submitters not shown)" if others else ""
    if args.json:
        if note:
            print(note, file=sys.stderr)
        _json(
            [
                {
                    "run_id": r.run_id,
                    "pipeline": r.pipeline,
                    "state": r.state,
                    "created_at": r.created_at,
                    "finished_at": r.finished_at,
                    "submitter": r.submitter,
                }
                for r in runs
            ]
        )
        return 0
    _table(
        [(r.run_id, r.pipeline, r.state, _ts(r.created_at), _dur(r.created_at, r.finished_at)) for r in runs],
        ("RUN", "PIPELINE", "STATE", "SUBMITTED", "TOOK"),
    )
    if note:
        print(note)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.get_run(args.run)
        recorded = client.stage_metrics([run.run_id])[0]  # what its stages logged (outrider.cli_metrics)
    if args.json:
        _json(cli_metrics.status_json(run_json(run), recorded))
    else:
        print_run(run)
        cli_metrics.print_status(recorded)
    return 0


def _reconnecting(tries: int, exc: OutriderError) -> None:
    print(f"outrider: connection lost ({exc}); reconnecting (try {tries})", file=sys.stderr, flush=True)


def _watch(client: Any, run_id: str, as_json: bool, quiet: bool = False, events: Any = None) -> int:
    """Print a run's events until it ends: its recorded history first, then live ones; a lost
    connection (a scheduler restart) is resumed after the last event shown."""
    final = None
    stream = client.follow(run_id, on_reconnect=_reconnecting) if events is None else events
    for ev in stream:
        if ev.HasField("snapshot"):
            final = ev.snapshot
        if not ev.seq:
            continue  # a snapshot that opens a connection: no event of its own
        if as_json:
            if not quiet or (not ev.task and ev.state in TERMINAL):
                print(
                    json.dumps(
                        {
                            "run_id": ev.run_id,
                            "task": ev.task,
                            "state": ev.state,
                            "attempt": ev.attempt,
                            "agent": ev.agent,
                            "message": ev.message,
                            "ts": ev.ts,
                            "seq": ev.seq,
                        }
                    ),
                    flush=True,
                )
        elif ev.task:
            where = f" attempt {ev.attempt} on {ev.agent}" if ev.agent and ev.state != "ready" else ""
            msg = f": {ev.message}" if ev.message else ""
            print(
                f"{time.strftime('%H:%M:%S', time.localtime(ev.ts))}  {ev.task:<16} {ev.state}{where}{msg}", flush=True
            )
        elif ev.state in TERMINAL:
            print(f"{time.strftime('%H:%M:%S', time.localtime(ev.ts))}  run {ev.state}", flush=True)
    if final is None or final.state not in TERMINAL:
        final = client.get_run(run_id)
    if as_json:
        _json(run_json(final))
    else:
        print()
        print_run(final)
    return cli_errors.EXIT_OK if final.state == "succeeded" else cli_errors.EXIT_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if sys.stdout.isatty() and not args.json:  # a person at a terminal: the live view
            from outrider.cli_watchview import run_live

            final = run_live(client, args.run)
            print()
            print_run(final)
            return cli_errors.EXIT_OK if final.state == "succeeded" else cli_errors.EXIT_FAILED
        return _watch(client, args.run, args.json)


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        multi = args.attempt == 0
        last = None
        for line in client.logs(args.run, args.task, attempt=args.attempt, follow=args.follow):
            if args.json:
                print(
                    json.dumps(
                        {
                            "attempt": line.attempt,
                            "stream": line.stream,
                            "ts": line.ts,
                            "data": line.data.decode("utf-8", "replace"),
                        }
                    ),
                    flush=True,
                )
                continue
            if multi and line.attempt != last:
                print(f"--- attempt {line.attempt} ---", file=sys.stderr, flush=True)
                last = line.attempt
            out = sys.stderr if line.stream == "stderr" else sys.stdout
            out.buffer.write(line.data)
            out.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.cancel(args.run)
    if args.json:
        _json(run_json(run))
    else:
        print(f"run {run.run_id} {run.state}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.retry(args.run)
        if args.json and not args.watch:
            _json(run_json(run))
        elif not args.json:
            again = [t.name for t in run.tasks if t.state not in ("succeeded",)]
            print(f"run {run.run_id} {run.state}: rerunning {', '.join(again) or 'nothing'}")
        if args.watch:
            return _watch(client, run.run_id, args.json)
    return 0


def cmd_artifact_get(args: argparse.Namespace) -> int:
    from pathlib import Path

    dest = Path(args.output)
    show = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if show:
            pct = f" {done * 100 // total}%" if total else ""
            print(f"\r{_bytes(done)} of {_bytes(total)}{pct}", end="", file=sys.stderr, flush=True)

    with _client(args) as client:
        if args.extract:
            import tempfile

            from outrider.artifacts import CLI_MAX_EXTRACT_BYTES, unpack_dir

            with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
                blob = client.download(args.digest, Path(tmp) / "blob", progress)
                size = blob.stat().st_size  # the bytes the digest names: the declared size
                unpack_dir(blob, dest, declared_size=size, max_bytes=CLI_MAX_EXTRACT_BYTES)
        else:
            size = client.download(args.digest, dest, progress).stat().st_size
    if show:
        print(file=sys.stderr)
    if args.json:
        _json({"digest": args.digest, "path": str(dest), "size": size, "verified": True})
    else:
        print(f"{dest}: {_bytes(size)}, sha256 {args.digest} verified")
    return 0


# ---------------------------------------------------------------------------- parser


def _connection_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection (else OUTRIDER_SCHEDULER/_CA/_CERT/_KEY, else the config file)")
    g.add_argument("--scheduler", help="scheduler HOST:PORT")
    g.add_argument("--ca", help="CA certificate")
    g.add_argument("--cert", help="your certificate")
    g.add_argument("--key", help="your private key")
    g.add_argument("--config", help="client config file (TOML)")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def build_parser() -> argparse.ArgumentParser:
    conn = _connection_flags()
    p = cli_errors.Parser(prog="outrider", description="Outrider: run ML pipelines across GPU, HPC and edge.")
    p.add_argument("--version", action="version", version=cli_observe.version_text(), help="show the version and exit")
    # Every verb's parser is a Parser too (argparse makes subparsers of the parent's class).
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        p.add_subparsers(dest="verb", required=True, metavar="VERB"),
    )

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[conn], help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    sp = verb("plan", cmd_plan, "validate a pipeline and show which agents can run each task")
    sp.add_argument("file")
    sp = verb("submit", cmd_submit, "submit a pipeline; prints the run id")
    sp.add_argument("file")
    sp.add_argument("--watch", action="store_true", help="then watch it to the end (exit 0 on success)")
    sp.add_argument("--strict", action="store_true", help="refuse a pipeline with a task no registered agent can run")
    sp = verb("runs", cmd_runs, "list recent runs")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--state", choices=("running", *TERMINAL))
    sp = verb("status", cmd_status, "show a run and its tasks")
    sp.add_argument("run")
    sp = verb("watch", cmd_watch, "follow a run live; exit 0 if it succeeds, 1 otherwise")
    sp.add_argument("run")
    sp = verb("logs", cmd_logs, "print a task's logs")
    sp.add_argument("run")
    sp.add_argument("task")
    sp.add_argument("-f", "--follow", action="store_true", help="keep following until the task ends")
    sp.add_argument("--attempt", type=int, default=0, help="one attempt (default: all)")
    sp = verb("cancel", cmd_cancel, "cancel a run; running stages are stopped")
    sp.add_argument("run")
    sp = verb("retry", cmd_retry, "rerun a run's failed, upstream_failed and cancelled tasks")
    sp.add_argument("run")
    sp.add_argument("--watch", action="store_true")
    verb("agents", cli_agents.cmd_agents, "list agents, their health, capabilities and clocks")
    sp = verb("drain", cli_agents.cmd_drain, "ask an agent to drain: no new work; its stages checkpoint, move (admin)")
    sp.add_argument("agent")
    sp = verb("explain", cmd_explain, "why a task is pending (and until when), or why it runs where it does")
    sp.add_argument("run")
    sp.add_argument("task")
    art = sub.add_parser("artifact", help="artifact commands")
    art_sub = art.add_subparsers(dest="artifact_verb", required=True, metavar="VERB")
    sp = art_sub.add_parser("get", parents=[conn], help="download an artifact, verified against its digest")
    sp.add_argument("digest")
    sp.add_argument("-o", "--output", required=True, help="where to write it")
    sp.add_argument("--extract", action="store_true", help="unpack a directory artifact into OUTPUT")
    sp.set_defaults(func=cmd_artifact_get)

    from outrider import cli_audit, cli_pki, cli_revoke, cli_token, cli_trace

    cli_audit.add_parser(sub, conn)
    cli_revoke.add_parser(sub, conn)
    cli_token.add_parser(sub, conn)
    cli_pki.add_parser(sub)
    cli_observe.add_parser(sub, conn)
    cli_metrics.add_parser(sub, conn)
    cli_trace.add_parser(sub, conn)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except cli_errors.UsageError as exc:  # as argparse says it, and under --json as every error is
        return cli_errors.report_usage(exc, "--json" in argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return cli_errors.EXIT_INTERRUPTED
    except BrokenPipeError:
        return cli_errors.EXIT_OK
    except (OutriderError, OSError) as exc:
        return cli_errors.report_error(exc, as_json)
    except Exception as exc:
        translated = cli_errors.rpc_error(exc)
        if translated is None:
            raise
        return cli_errors.report_error(translated, as_json)


if __name__ == "__main__":
    sys.exit(main())
