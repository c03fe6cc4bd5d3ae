"""``outrider events``, ``outrider lineage``, ``outrider --version``, and ids by unique prefix.

Every verb's RUN and DIGEST arguments may be a unique prefix, as git allows: the verbs'
client is made by :func:`connect`, which asks the scheduler (``Resolve``) for the full id of
each argument that is not one already; an ambiguous prefix
is an invalid request (exit 3) naming the candidates, one that matches nothing the
caller may see is "not found" (exit 5).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from outrider import client_events

_RUN_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]*$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
#: Argument names that hold run ids (one, or a list) and artifact digests.
RUN_ARGS = ("run", "runs")
DIGEST_ARGS = ("digest",)


def version_text() -> str:
    """``outrider --version``: the installed package's version and the wire protocol's."""
    from importlib import metadata

    try:
        version = metadata.version("outrider")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    from outrider.v1 import control_pb2

    return f"outrider {version} (wire protocol {control_pb2.DESCRIPTOR.package})"


def connect(args: argparse.Namespace) -> Any:
    """The verb's client (its connection flags), with its RUN and DIGEST arguments given as
    unique prefixes replaced by the full ids (:func:`resolve_args`)."""
    from outrider.client import Client

    client = Client.from_env(scheduler=args.scheduler, ca=args.ca, cert=args.cert, key=args.key, config=args.config)
    try:
        resolve_args(client, args)
    except BaseException:
        client.close()
        raise
    return client


def resolve_args(client: Any, args: argparse.Namespace) -> None:
    """Replace each RUN or DIGEST argument given as a prefix by the full id (one call each)."""
    todo: list[tuple[str, str, int]] = []  # (attribute, kind, index in a list or -1)
    for attrs, kind in ((RUN_ARGS, "run"), (DIGEST_ARGS, "artifact")):
        for attr in attrs:
            value = getattr(args, attr, None)
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                if isinstance(v, str) and _a_prefix(kind, v):
                    todo.append((attr, kind, i if isinstance(value, list) else -1))
    for attr, kind, i in todo:
        value = getattr(args, attr)
        if i < 0:
            setattr(args, attr, client_events.resolve(client, kind, value))
        else:
            value[i] = client_events.resolve(client, kind, value[i])


def _a_prefix(kind: str, text: str) -> bool:
    """Whether ``text`` is to be resolved: hex (a run id's with dashes) and not whole already.
    Anything else goes to the verb as given, which says what is wrong with it ("no run ...")."""
    from outrider.protocol import is_digest

    if kind == "run":
        return not client_events.FULL_RUN_ID.match(text) and bool(_RUN_PREFIX.match(text.removeprefix("run-")))
    return not is_digest(text) and bool(_HEX.match(text.removeprefix("sha256:")))


# ---------------------------------------------------------------------------- events


def event_json(ev: Any) -> dict[str, Any]:
    """The stable ``--json`` shape of one event (``outrider events``)."""
    return {
        "seq": ev.seq,
        "time": ev.ts,
        "run_id": ev.run_id,
        "task": ev.task,
        "attempt": ev.attempt,
        "kind": ev.state,
        "agent": ev.agent,
        "message": ev.message,
        "score": ev.score if ev.state == "running" and ev.task else None,
    }


def event_line(ev: Any) -> str:
    """One event for a person: seq, time, run, task, what happened, where, why."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.ts))
    what = ev.task or ("(run)" if ev.run_id else "(scheduler)")  # no run: an alert
    if not ev.run_id:
        where = f" agent {ev.agent}" if ev.agent else ""
    elif ev.agent:
        where = f" attempt {ev.attempt} on {ev.agent}"
    else:
        where = f" attempt {ev.attempt}" if ev.attempt else ""
    msg = f": {ev.message}" if ev.message else ""
    return f"{ev.seq:>8}  {when}  {ev.run_id or '-'}  {what:<16} {ev.state}{where}{msg}"


def _reconnecting(tries: int, exc: Exception) -> None:
    print(f"outrider: connection lost ({exc}); reconnecting (try {tries})", file=sys.stderr, flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.follow:
            stream: Iterable[Any] = client_events.follow_events(
                client, after_seq=args.since, run_id=args.run or "", on_reconnect=_reconnecting
            )
        else:
            stream = client_events.events(client, after_seq=args.since, run_id=args.run or "")
        for ev in stream:
            print(json.dumps(event_json(ev), sort_keys=True) if args.json else event_line(ev), flush=True)
    return 0


# ---------------------------------------------------------------------------- lineage


def _ref_json(a: Any) -> dict[str, Any]:
    return {"name": a.name, "digest": a.digest, "size": a.size, "kind": a.kind}


def lineage_json(resp: Any) -> dict[str, Any]:
    """The stable ``--json`` shape of ``outrider lineage``."""
    return {
        "digest": resp.digest,
        "direction": resp.direction,
        "steps": [
            {
                "run_id": s.run_id,
                "pipeline": s.pipeline,
                "task": s.task,
                "attempt": s.attempt,
                "agent": s.agent,
                "state": s.state,
                "command": list(s.command),
                "code_digest": s.code_digest,
                "inputs": [_ref_json(a) for a in s.inputs],
                "outputs": [_ref_json(a) for a in s.outputs],
                "depth": s.depth,
                "finished_at": s.finished_at,
            }
            for s in resp.steps
        ],
        "raw_inputs": list(resp.raw_inputs),
        "truncated": resp.truncated or None,
    }


def lineage_lines(resp: Any) -> list[str]:
    """``outrider lineage`` for a person: each step indented by its distance from the artifact."""
    up = resp.direction == "up"
    head = "what made it, back to its raw inputs" if up else "everything derived from it"
    out = [f"artifact {resp.digest} ({head})"]
    arrow = "<-" if up else "->"
    for s in resp.steps:
        pad = "  " * s.depth
        cmd = " ".join(s.command)
        if len(cmd) > 100:
            cmd = cmd[:99] + "…"
        link = _linked(resp.steps, s, up)
        out.append(f"{pad}{arrow} {s.task} ({s.state}) run {s.run_id} attempt {s.attempt} on {s.agent or '-'}{link}")
        out.append(f"{pad}     command: {cmd or '-'}")
        out.append(f"{pad}     code bundle: {s.code_digest[:12] or '-'}")
        for a in s.inputs:
            out.append(f"{pad}     input  {a.name}={a.digest[:12]} ({a.kind}, {a.size} B)")
        for a in s.outputs:
            out.append(f"{pad}     output {a.name}={a.digest[:12]} ({a.kind}, {a.size} B)")
    if up:
        raw = ", ".join(d[:12] for d in resp.raw_inputs) or "-"
        out.append(f"raw inputs (made by no task): {raw}")
    if not resp.steps:
        out.append("  (no task " + ("made it" if up else "used it") + ")")
    if resp.truncated:
        out.append(f"note: {resp.truncated} (--max-depth, --max-steps)")
    return out


def _linked(steps: Any, s: Any, up: bool) -> str:
    """Which steps one level nearer the artifact ``s`` is tied to (a walk visits a step once, so
    indentation alone cannot say it): up, the ones that used what it made; down, the ones that
    made what it used."""
    if s.depth <= 1:
        return ""
    mine = {a.digest for a in (s.outputs if up else s.inputs)}
    near = [
        p.task for p in steps if p.depth == s.depth - 1 and mine & {a.digest for a in (p.inputs if up else p.outputs)}
    ]
    return f" ({'for' if up else 'from'} {', '.join(dict.fromkeys(near))})" if near else ""


def _q(s: str) -> str:
    """A DOT string: backslashes and quotes escaped, a newline as DOT's own ``\\n``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def lineage_dot(resp: Any) -> str:
    """Graphviz DOT: artifacts as ellipses, tasks as boxes; data flows along the edges."""
    lines = [f"digraph lineage {{  // {resp.direction} from {resp.digest}", "  node [fontsize=10];"]
    names: dict[str, str] = {}
    edges: list[str] = []
    for s in resp.steps:
        node = f"{s.run_id}/{s.task}"
        label = f"{s.task}\n{s.run_id}\nattempt {s.attempt} on {s.agent or '-'}"
        lines.append(f"  {_q(node)} [shape=box, label={_q(label)}];")
        for a in s.inputs:
            names.setdefault(a.digest, a.name)
            edges.append(f"  {_q(a.digest)} -> {_q(node)} [label={_q(a.name)}];")
        if s.code_digest:
            names.setdefault(s.code_digest, "code bundle")
            edges.append(f"  {_q(s.code_digest)} -> {_q(node)} [style=dashed];")
        for a in s.outputs:
            names.setdefault(a.digest, a.name)
            edges.append(f"  {_q(node)} -> {_q(a.digest)} [label={_q(a.name)}];")
    names.setdefault(resp.digest, "")
    for d, name in names.items():
        label = d[:12] + (f"\n{name}" if name else "")
        bold = ", style=bold" if d == resp.digest else ""
        lines.append(f"  {_q(d)} [shape=ellipse, label={_q(label)}{bold}];")
    lines.extend(dict.fromkeys(edges))  # each edge once, in order
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_lineage(args: argparse.Namespace) -> int:
    if args.json and args.dot:
        from outrider.errors import InvalidArgument

        raise InvalidArgument("--json and --dot are exclusive: choose one output")
    with connect(args) as client:
        resp = client_events.lineage(
            client, args.digest, down=args.down, max_depth=args.max_depth, max_steps=args.max_steps
        )
    if args.json:
        print(json.dumps(lineage_json(resp), indent=2, sort_keys=True))
    elif args.dot:
        sys.stdout.write(lineage_dot(resp))
    else:
        print("\n".join(lineage_lines(resp)))
    return 0


# ---------------------------------------------------------------------------- parser


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    h = "the ordered event stream (state changes, placements, retries, lease expiries, checkpoints)"
    sp = sub.add_parser("events", parents=[conn], help=h, description=h)
    sp.add_argument("--follow", "-f", action="store_true", help="then follow live events (resumes after a reconnect)")
    sp.add_argument("--run", help="one run's events only (a run id or a unique prefix)")
    sp.add_argument("--since", type=_seq, default=0, metavar="SEQ", help="only events after this seq (default: all)")
    sp.set_defaults(func=cmd_events)
    h = "which task, attempt, agent, command, code and inputs made an artifact, or what was made from it"
    sp = sub.add_parser("lineage", parents=[conn], help=h, description=h)
    sp.add_argument("digest", help="an artifact digest or a unique prefix of one")
    way = sp.add_mutually_exclusive_group()
    way.add_argument("--up", dest="down", action="store_false", help="walk up to the raw inputs (default)")
    way.add_argument("--down", dest="down", action="store_true", help="walk down to everything derived from it")
    sp.add_argument("--dot", action="store_true", help="print Graphviz DOT")
    sp.add_argument("--max-depth", type=_seq, default=0, help="levels to walk at most (default 32, at most 256)")
    sp.add_argument("--max-steps", type=_seq, default=0, help="steps to show at most (default 500, at most 5000)")
    sp.set_defaults(func=cmd_lineage, down=False)


def _seq(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0 or n > 2**62:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**62, got {n}")
    return n
