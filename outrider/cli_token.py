"""``outrider token create|list|revoke``: join tokens for zero-touch enrolment (admin).

Wired in by ``outrider.cli``. A token is ``<token_id>.<secret>``; the scheduler keeps only a
hash of the secret, so ``create`` is the one time it is shown. Give it to the new machine::

    outrider-agent join --scheduler HOST:ENROLL_PORT --token T --ca-fingerprint sha256:HEX

``--json`` prints :func:`token_json` objects (``create`` adds ``token``), a stable contract
(keys are only ever added).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from outrider.errors import InvalidArgument


def _client(args: argparse.Namespace) -> Any:
    from outrider.client import Client

    return Client.from_env(scheduler=args.scheduler, ca=args.ca, cert=args.cert, key=args.key, config=args.config)


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_json(t: Any) -> dict[str, Any]:
    """One token as ``--json`` shows it (``t``: a ``TokenInfo``); never its secret."""
    return {
        "token_id": t.token_id,
        "created_at": t.created_at,
        "created_by": t.created_by,
        "expires_at": t.expires_at,
        "expires_at_utc": utc(t.expires_at),
        "uses_left": t.uses_left,
        "labels": dict(t.labels),
        "zones": list(t.zones),
    }


def _describe(t: Any) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "none"
    zones = ",".join(t.zones) or "none"
    return f"labels {labels}; zones {zones}; {t.uses_left} use(s) left; expires {utc(t.expires_at)}"


def cmd_create(args: argparse.Namespace) -> int:
    from outrider.config import parse_duration, parse_labels

    try:
        labels = parse_labels(args.labels or "")
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise InvalidArgument(f"token create: {exc}") from None
    zones = [z.strip() for z in args.zones.split(",")] if args.zones else None
    if args.uses < 1:
        raise InvalidArgument(f"token create: --uses must be at least 1, got {args.uses}")
    with _client(args) as client:
        resp = client.create_token(labels, zones, ttl, args.uses)
    if args.json:
        print(json.dumps({**token_json(resp.info), "token": resp.token}, indent=2, sort_keys=True))
        return 0
    print(resp.token)
    print(f"join token {resp.info.token_id}: {_describe(resp.info)}; shown only now", flush=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tokens = client.list_tokens()
    if args.json:
        print(json.dumps([token_json(t) for t in tokens], indent=2, sort_keys=True))
        return 0
    if not tokens:
        print("no join tokens")
    for t in tokens:
        print(f"{t.token_id}  {_describe(t)}  (by {t.created_by})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        t = client.revoke_token(args.token_id)
    if args.json:
        print(json.dumps(token_json(t), indent=2, sort_keys=True))
    else:
        print(f"join token {t.token_id} revoked ({t.uses_left} use(s) were left); it enrols no one now")
    return 0


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """``token create``, ``token list`` and ``token revoke`` under the CLI's verbs."""
    tp = sub.add_parser("token", help="join tokens: let new machines enrol as agents (admin)")
    verbs = tp.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    about = "make a join token for `outrider-agent join`; prints it once (admin)"
    cp = verbs.add_parser("create", parents=[conn], help=about, description=about)
    cp.add_argument("--labels", help="k=v,k=v: the labels of agents enrolled with it")
    cp.add_argument("--zones", help="Z1,Z2: the data-residency zones their certificates name (default: none)")
    cp.add_argument("--ttl", default="1h", help="how long it may be used, e.g. 30m, 1h (default), 7d")
    cp.add_argument("--uses", type=int, default=1, help="how many machines may enrol with it (default 1)")
    cp.set_defaults(func=cmd_create)
    about = "list the join tokens on record, never their secrets (admin)"
    lp = verbs.add_parser("list", parents=[conn], help=about, description=about)
    lp.set_defaults(func=cmd_list)
    about = "withdraw a join token before it is used up or expires (admin)"
    rp = verbs.add_parser("revoke", parents=[conn], help=about, description=about)
    rp.add_argument("token_id", metavar="TOKEN_ID", help="the token's id (the part before the dot)")
    rp.set_defaults(func=cmd_revoke)
