"""``outrider trace RUN [--json]``: a run's trace, the timeline of its attempts across machines.

Wired in by ``outrider.cli``. The default output is an indented tree with a text Gantt bar
per span (start offset from the run's submission, duration, span, task#attempt, agent);
``--json`` prints ``{"run_id", "trace_id", "spans": [...]}``, each span with its W3C ids
(``trace_id``, ``span_id``, ``parent_span_id``), ``name``, ``start``/``end`` (Unix seconds on
the scheduler's clock; ``end`` null while open), ``task``, ``attempt``, ``agent`` and
``attributes``: a stable contract (keys are only ever added).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

BAR = 32  #: the Gantt bar's width, in characters


def span_json(trace_id: str, s: Any) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_span_id or None,
        "name": s.name,
        "start": s.start,
        "end": s.end or None,
        "task": s.task,
        "attempt": s.attempt,
        "agent": s.agent,
        "attributes": dict(sorted(s.attributes.items())),
    }


def _depth(spans: list[Any]) -> dict[str, int]:
    parent = {s.span_id: s.parent_span_id for s in spans}
    depth: dict[str, int] = {}
    for s in spans:
        d, p, seen = 0, s.parent_span_id, set()
        while p and p in parent and p not in seen:
            seen.add(p)
            d, p = d + 1, parent[p]
        depth[s.span_id] = d
    return depth


def _bar(start: float, end: float, t0: float, total: float) -> str:
    if total <= 0:
        return "█" * BAR
    a = min(BAR - 1, int((start - t0) / total * BAR))
    b = max(a + 1, min(BAR, round((end - t0) / total * BAR)))
    return " " * a + "█" * (b - a) + " " * (BAR - b)


def render(resp: Any, now: float | None = None) -> list[str]:
    """The text timeline of a GetTraceResponse."""
    spans = list(resp.spans)
    if not spans:
        return [f"run {resp.run_id}: no spans recorded"]
    now = time.time() if now is None else now
    t0 = min(s.start for s in spans)
    t1 = max(s.end or now for s in spans)
    total = t1 - t0
    depth = _depth(spans)
    lines = [f"run {resp.run_id}  trace {resp.trace_id}  {total:.3f}s", ""]
    lines.append(f"{'START':>9} {'DURATION':>9}  {'':{BAR}}  {'SPAN':<26} {'TASK#ATTEMPT':<24} AGENT")
    for s in spans:
        end = s.end or now
        dur = f"{end - s.start:.3f}s" + ("" if s.end else "…")
        name = "  " * depth[s.span_id] + s.name
        who = f"{s.task}#{s.attempt}" if s.task else ""
        state = s.attributes.get("state", "")
        extra = f" ({state})" if state and s.name in ("run", "attempt") else ""
        lines.append(
            f"{'+%.3fs' % (s.start - t0):>9} {dur:>9}  {_bar(s.start, end, t0, total)}  "
            f"{(name + extra):<26} {who:<24} {s.agent}".rstrip()
        )
    return lines


def get_trace(client: Any, run_id: str) -> Any:
    """A run's trace (``GetTrace``) through a :class:`~outrider.client.Client`: its spans, with
    W3C ids and times on the scheduler's clock (a ``GetTraceResponse``)."""
    from outrider.v1 import control_pb2

    return client._call(client.control.GetTrace, control_pb2.GetTraceRequest(run_id=run_id))


def cmd_trace(args: argparse.Namespace) -> int:
    from outrider.cli import _client  # the verbs' one client (RUN may be a unique prefix)

    with _client(args) as c:
        resp = get_trace(c, args.run)
    if args.json:
        doc = {
            "run_id": resp.run_id,
            "trace_id": resp.trace_id,
            "spans": [span_json(resp.trace_id, s) for s in resp.spans],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print("\n".join(render(resp)))
    return 0


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    help = "a run's trace: the timeline of its tasks' queueing, transfers, execution and commits across machines"
    sp = sub.add_parser("trace", parents=[conn], help=help, description=help)
    sp.add_argument("run")
    sp.set_defaults(func=cmd_trace)
