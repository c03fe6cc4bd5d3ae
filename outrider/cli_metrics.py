"""Stage metrics in the CLI: ``outrider metrics RUN [RUN ...]`` and the part ``outrider status`` shows.

What stages record (:mod:`outrider.metrics`) is stored per attempt. Shown for a task is, for
each name, the value of the latest attempt that logged it (with its step, when it was logged
with one). ``outrider metrics`` compares runs: one row per task and name, one column per run.

``--json`` shapes are a stable contract (keys are only ever added):

* ``status --json``: each task gains ``"metrics"`` (name → :func:`metric_json`) and
  ``"metrics_skipped"`` (``{"attempt", "count", "reason"}`` of its latest attempt that skipped
  lines, or null); the run gains ``"metrics_truncated"`` (true when the run has more figures
  than one answer holds, 50,000: only the first, by task, attempt and name, are shown);
* ``metrics --json``: ``{"runs": [RUN, ...], "tasks": {TASK: {NAME: {RUN: metric or null}}},
  "skipped": {RUN: {TASK: {"attempt", "count", "reason"}}}, "truncated": [RUN, ...]}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "cmd_metrics", "latest", "print_status", "status_json"]


def _client(args: argparse.Namespace) -> Any:
    """The verb's client, its RUN arguments given as unique prefixes made whole."""
    from outrider import cli_observe

    return cli_observe.connect(args)


def latest(rm: Any) -> dict[str, dict[str, Any]]:
    """task → name → the ``AttemptMetric`` of the latest attempt that logged the name."""
    out: dict[str, dict[str, Any]] = {}
    for m in rm.metrics:
        have = out.setdefault(m.task, {}).get(m.name)
        if have is None or m.attempt > have.attempt:
            out[m.task][m.name] = m
    return out


def _skipped(rm: Any) -> dict[str, Any]:
    """task → the skipped-lines record of its latest attempt that has one."""
    out: dict[str, Any] = {}
    for s in rm.skipped:
        if s.task not in out or s.attempt > out[s.task].attempt:
            out[s.task] = s
    return out


def metric_json(m: Any) -> dict[str, Any]:
    return {
        "value": m.value,
        "step": m.step if m.HasField("step") else None,
        "attempt": m.attempt,
        "ts": m.ts,
        "count": m.count,
    }


def _skip_json(s: Any) -> dict[str, Any]:
    return {"attempt": s.attempt, "count": s.count, "reason": s.reason}


def status_json(run: dict[str, Any], rm: Any) -> dict[str, Any]:
    """``run`` (``outrider.cli.run_json``) with each task's metrics added."""
    last, skipped = latest(rm), _skipped(rm)
    for name, task in run["tasks"].items():
        task["metrics"] = {n: metric_json(m) for n, m in sorted(last.get(name, {}).items())}
        task["metrics_skipped"] = _skip_json(skipped[name]) if name in skipped else None
    run["metrics_truncated"] = rm.truncated
    return run


def _value(m: Any) -> str:
    step = f" @{m.step}" if m.HasField("step") else ""
    return f"{m.value:.6g}{step}"


def _table(rows: list[list[str]], header: list[str], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_status(rm: Any) -> None:
    """The metrics section of ``outrider status`` (nothing when no stage logged any)."""
    last, skipped = latest(rm), _skipped(rm)
    if last:
        print("metrics (the latest attempt's last value; @ its step):")
        rows = [
            [task, name, _value(m), str(m.attempt)]
            for task, names in sorted(last.items())
            for name, m in sorted(names.items())
        ]
        _table(rows, ["TASK", "NAME", "VALUE", "ATTEMPT"], "  ")
    for task, s in sorted(skipped.items()):
        print(f"  {task}: attempt {s.attempt} skipped {s.count} line(s) of its metrics file: {s.reason}")
    if rm.truncated:
        print(f"  (more figures than one answer holds: only the first {len(rm.metrics)} were read)")


def cmd_metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs = client.stage_metrics(list(args.runs))
    ids = [rm.run_id for rm in runs]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for rm in runs:
        for task, names in latest(rm).items():
            for name, m in names.items():
                table.setdefault(task, {}).setdefault(name, {})[rm.run_id] = m
    if args.json:
        out = {
            "runs": ids,
            "tasks": {
                task: {
                    name: {r: metric_json(by[r]) if r in by else None for r in ids}
                    for name, by in sorted(names.items())
                }
                for task, names in sorted(table.items())
            },
            "skipped": {rm.run_id: {t: _skip_json(s) for t, s in sorted(_skipped(rm).items())} for rm in runs},
            "truncated": [rm.run_id for rm in runs if rm.truncated],
        }
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    if not table:
        print("no stage of " + ", ".join(ids) + " recorded metrics (outrider.metrics.log, $OUTRIDER_METRICS_FILE)")
    else:
        rows = [
            [task, name, *(_value(by[r]) if r in by else "-" for r in ids)]
            for task, names in sorted(table.items())
            for name, by in sorted(names.items())
        ]
        _table(rows, ["TASK", "NAME", *ids])
    for rm in runs:
        for task, s in sorted(_skipped(rm).items()):
            print(f"{rm.run_id} {task}: attempt {s.attempt} skipped {s.count} line(s): {s.reason}")
        if rm.truncated:
            print(f"{rm.run_id}: more figures than one answer holds; only the first {len(rm.metrics)} were read")
    return 0


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """``metrics RUN [RUN ...]`` under the CLI's verbs."""
    about = (
        "compare what the stages of runs recorded (outrider.metrics): one row per task and name, "
        "one column per run, the latest attempt's last value (@ its step)"
    )
    sp = sub.add_parser("metrics", parents=[conn], help=about, description=about)
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run ids (at most 32)")
    sp.set_defaults(func=cmd_metrics)
