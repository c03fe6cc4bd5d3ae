"""``outrider audit`` and ``outrider audit verify``: the scheduler's audit log (admin).

Wired in by ``outrider.cli``. ``--json`` shapes are a stable contract (keys are only ever
added): ``audit`` prints a list of :func:`record_json` objects, oldest first; ``audit
verify`` one :func:`verdict_json` object. ``audit verify`` exits 0 when the chain is
intact and 1 when it is broken (naming the first broken record).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from typing import Any

from outrider.errors import InvalidArgument

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> tuple[int, float]:
    """``--since``: a record's seq (digits: that record on), a duration ago (``90s``, ``10m``,
    ``2h``, ``7d``) or a time (ISO 8601; without a zone, UTC). Returns (after_seq, since_ts)."""
    text = text.strip()
    if text.isdigit():
        return max(int(text) - 1, 0), 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return 0, (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"--since {text!r}: give a record's seq (42), a duration ago (90s, 10m, 2h, 7d) "
            "or a time (2026-11-30T01:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return 0, when.timestamp()


def iso(ts_us: int) -> str:
    return dt.datetime.fromtimestamp(ts_us / 1e6, dt.timezone.utc).isoformat(timespec="microseconds")


def record_json(r: Any) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "ts": iso(r.ts_us),
        "ts_us": r.ts_us,
        "identity": r.identity,
        "action": r.action,
        "target": r.target,
        "outcome": r.outcome,
        "detail": r.detail,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }


def verdict_json(v: Any) -> dict[str, Any]:
    return {
        "ok": v.ok,
        "records": v.records,
        "first_broken_seq": v.first_broken_seq,
        "reason": v.reason,
        "head_seq": v.head_seq,
        "head_hash": v.head_hash,
    }


def _client(args: argparse.Namespace) -> Any:
    from outrider.client import Client

    return Client.from_env(scheduler=args.scheduler, ca=args.ca, cert=args.cert, key=args.key, config=args.config)


def cmd_audit(args: argparse.Namespace) -> int:
    after_seq, since_ts = parse_since(args.since) if args.since else (0, 0.0)
    with _client(args) as client:
        records = list(client.list_audit(after_seq, since_ts, args.identity or "", args.limit))
    if args.json:
        print(json.dumps([record_json(r) for r in records], indent=2, sort_keys=True))
        return 0
    rows = [(str(r.seq), iso(r.ts_us)[:23], r.identity, r.action, r.target, r.outcome, r.detail) for r in records]
    header = ("SEQ", "TIME (UTC)", "IDENTITY", "ACTION", "TARGET", "OUTCOME", "DETAIL")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _client(args) as client:
        v = client.verify_audit()
    if args.json:
        print(json.dumps(verdict_json(v), indent=2, sort_keys=True))
    elif v.ok:
        print(f"audit log intact: {v.records} records; head {v.head_seq} {v.head_hash}")
    else:
        print(f"audit log BROKEN at record {v.first_broken_seq}: {v.reason}")
        print(f"intact up to record {v.head_seq} ({v.head_hash})")
    return 0 if v.ok else 1


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """``audit`` (list) and ``audit verify`` under the CLI's verbs."""
    about = "list the audit log: who did what, when, with what outcome (admin)"
    sp = sub.add_parser("audit", parents=[conn], help=about, description=about)
    sp.add_argument("--since", help="from a record's seq (42), a duration ago (10m, 2h, 7d) or a time (ISO 8601)")
    sp.add_argument("--identity", help="only this identity's records (a SPIFFE ID, or 'scheduler')")
    sp.add_argument("--limit", type=int, default=0, help="at most this many records (default: all)")
    sp.set_defaults(func=cmd_audit)
    verbs = sp.add_subparsers(dest="audit_verb", metavar="VERB")
    about = "recompute the audit log's hash chain; exit 1 naming the first broken record (admin)"
    vp = verbs.add_parser("verify", parents=[conn], help=about, description=about)
    vp.set_defaults(func=cmd_verify)
