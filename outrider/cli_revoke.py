"""``outrider revoke agent NAME``: revoke an agent for good (admin).

Wired in by ``outrider.cli``. From the moment the scheduler answers, every call with the
agent's certificate is refused (``UNAUTHENTICATED``), its work stream is ended, its leases
are cancelled and their tasks requeued (no retry spent), and the agent stops its stages and
exits (code 77). The list survives restarts. Revoking twice changes nothing and says so; a
name the scheduler never saw may be revoked too (a certificate may exist that never connected).

``--json`` prints one :func:`revocation_json` object, a stable contract (keys are only ever added).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any


def _client(args: argparse.Namespace) -> Any:
    from outrider.client import Client

    return Client.from_env(scheduler=args.scheduler, ca=args.ca, cert=args.cert, key=args.key, config=args.config)


def utc(ts: float) -> str:
    """Wall time as shown: ``2026-11-30T02:50:00Z``."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def revocation_json(r: Any) -> dict[str, Any]:
    """What ``revoke agent --json`` prints (``r``: a ``RevokeAgentResponse``)."""
    return {
        "agent": r.agent,
        "already_revoked": r.already_revoked,
        "known": r.known,
        "leases_requeued": r.leases_requeued,
        "reason": r.reason,
        "revoked_at": r.revoked_at,
        "revoked_at_utc": utc(r.revoked_at),
        "revoked_by": r.revoked_by,
    }


def describe(r: Any) -> str:
    """The line a person reads."""
    why = f" (reason: {r.reason})" if r.reason else ""
    if r.already_revoked:
        return f"agent {r.agent} was already revoked at {utc(r.revoked_at)} by {r.revoked_by}{why}; nothing changed"
    line = f"agent {r.agent} revoked at {utc(r.revoked_at)} by {r.revoked_by}{why}: "
    line += "every call with its certificate is refused"
    if not r.known:
        return line + "; no agent of this name has ever registered (its certificate is refused if it ever connects)"
    return line + f"; {r.leases_requeued} running task(s) cancelled there and requeued; it stops its stages and exits"


def cmd_revoke_agent(args: argparse.Namespace) -> int:
    with _client(args) as client:
        r = client.revoke_agent(args.name, args.reason or "")
    if args.json:
        print(json.dumps(revocation_json(r), indent=2, sort_keys=True))
    else:
        print(describe(r))
    return 0


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """``revoke agent NAME [--reason TEXT]`` under the CLI's verbs."""
    about = "revoke an identity for good (admin)"
    rp = sub.add_parser("revoke", help=about, description=about)
    kinds = rp.add_subparsers(dest="revoke_kind", required=True, metavar="KIND")
    about = (
        "revoke an agent (admin): every call with its certificate is refused from now on (it survives "
        "restarts), its running tasks are requeued elsewhere, and the agent stops its stages and exits"
    )
    ap = kinds.add_parser("agent", parents=[conn], help=about, description=about)
    ap.add_argument("name", help="the agent's name, as in its certificate (spiffe://DOMAIN/agent/NAME)")
    ap.add_argument("--reason", default="", metavar="TEXT", help="why (one line), kept with it and in the audit log")
    ap.set_defaults(func=cmd_revoke_agent)
