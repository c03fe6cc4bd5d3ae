"""``outrider pki``: create the private CA and issue identity certificates.

Wired in by ``outrider.cli``: it calls ``add_parser(sub)``, then ``args.func(args)``,
which returns the exit code. Errors are raised as OutriderError subclasses;
``outrider.cli.main`` prints ``outrider: error: <message>`` and exits with the code
``outrider.errors.EXIT_CODES`` gives its status (3 for InvalidArgument).

    outrider pki init DIR --trust-domain DOMAIN [--san HOST ...] [--force] [--json]
    outrider pki issue DIR {agent|submitter|admin} NAME [--zones Z1,Z2] [--force] [--json]
    outrider pki bundle OUT CA_CERT [CA_CERT ...] [--force] [--json]
    outrider pki fingerprint DIR [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from outrider import pki


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``pki`` command (with ``init`` and ``issue``) to ``subparsers``."""
    parser = subparsers.add_parser(
        "pki",
        help="create a private CA and issue certificates",
        description="Manage Outrider's private CA: every party authenticates with a certificate "
        "naming one SPIFFE ID, spiffe://<trust-domain>/<role>/<name>.",
    )
    verbs = parser.add_subparsers(dest="pki_command", metavar="{init,issue,fingerprint,bundle}")
    verbs.required = True

    init = verbs.add_parser(
        "init",
        help="create a CA and the scheduler's certificate",
        description="Create DIR (mode 0700) with ca.crt, ca.key, scheduler.crt, scheduler.key and "
        "trust_domain. The scheduler certificate is valid for localhost, 127.0.0.1, ::1 and every --san.",
    )
    init.add_argument("dir", metavar="DIR", help="directory to create the CA in")
    init.add_argument(
        "--trust-domain",
        required=True,
        metavar="DOMAIN",
        help="SPIFFE trust domain, e.g. acme.ml (lowercase letters, digits, dots, dashes)",
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="extra DNS name or IP address the scheduler is reached at (repeatable)",
    )
    init.add_argument(
        "--days", type=int, default=pki.DEFAULT_CA_DAYS, help=f"CA validity in days (default {pki.DEFAULT_CA_DAYS})"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing CA (invalidates every issued cert)")
    init.add_argument("--json", action="store_true", help="print the written paths as a JSON object")
    init.set_defaults(func=cmd_init)

    issue = verbs.add_parser(
        "issue",
        help="issue a certificate for an agent, submitter or admin",
        description="Write DIR/NAME.crt and DIR/NAME.key (mode 0600) for spiffe://<domain>/<role>/<name>, "
        "signed by the CA in DIR.",
    )
    issue.add_argument("dir", metavar="DIR", help="the CA directory made by `outrider pki init`")
    issue.add_argument("role", choices=pki.ROLES, help="what the identity may do")
    issue.add_argument("name", metavar="NAME", help="identity name: letters, digits, '.', '_', '-' (max 63)")
    issue.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_CERT_DAYS,
        help=f"certificate validity in days (default {pki.DEFAULT_CERT_DAYS})",
    )
    issue.add_argument(
        "--zones",
        metavar="Z1,Z2",
        help="agents: the data-residency zones it sits in, comma-separated (e.g. eu,eu-west); the scheduler "
        "takes them from the certificate, and the agent's own claim can only narrow them",
    )
    issue.add_argument("--force", action="store_true", help="overwrite an existing NAME.crt/NAME.key")
    issue.add_argument("--json", action="store_true", help="print the written paths as a JSON object")
    issue.set_defaults(func=cmd_issue)

    bundle = verbs.add_parser(
        "bundle",
        help="write several CA certificates into one ca.crt (a CA rotation)",
        description="Write the CA certificates of every CA_CERT (a CA's ca.crt, or a bundle), in order and "
        "each once, to OUT, replacing it atomically; OUT may be one of them. During a CA rotation the "
        "scheduler's ca.crt (reloaded on SIGHUP) and every agent's and client's hold the old and the new CA.",
    )
    bundle.add_argument("out", metavar="OUT", help="the bundle to write, e.g. the scheduler's PKI_DIR/ca.crt")
    bundle.add_argument(
        "sources", nargs="+", metavar="CA_CERT", help="CA certificate files, e.g. OLD/ca.crt NEW/ca.crt"
    )
    bundle.add_argument("--force", action="store_true", help="replace an existing OUT")
    bundle.add_argument("--json", action="store_true", help="print what was written as a JSON object")
    bundle.set_defaults(func=cmd_bundle)

    fp = verbs.add_parser(
        "fingerprint",
        help="print the CA certificate's fingerprint, the pin for `outrider-agent join --ca-fingerprint`",
        description="Print sha256:HEX, the SHA-256 of the DER encoding of DIR/ca.crt. A joining agent "
        "(`outrider-agent join --ca-fingerprint sha256:HEX`) trusts the enrolment port only if it shows this CA.",
    )
    fp.add_argument("dir", metavar="DIR", help="the CA directory (or any directory holding the CA's ca.crt)")
    fp.add_argument("--json", action="store_true", help='print {"fingerprint": ..., "ca": PATH} as JSON')
    fp.set_defaults(func=cmd_fingerprint)
    return parser


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if args.json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(human)


def cmd_init(args: argparse.Namespace) -> int:
    """``outrider pki init``: returns 0, raises InvalidArgument on bad input."""
    pki.init_ca(args.dir, args.trust_domain, sans=args.san, days=args.days, force=args.force)
    files = {k: str(v) for k, v in pki.ca_files(args.dir).items()}
    spiffe_id = pki.Identity(args.trust_domain, pki.SCHEDULER_ROLE, "scheduler").spiffe_id
    _emit(
        args,
        {
            **files,
            "trust_domain": args.trust_domain,
            "trust_domain_file": files["trust_domain"],
            "spiffe_id": spiffe_id,
        },
        f"created CA for {args.trust_domain} in {args.dir} (ca.crt, ca.key, scheduler.crt, scheduler.key); "
        f"keep ca.key private",
    )
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    """``outrider pki issue``: returns 0, raises InvalidArgument on bad input."""
    zones = None if args.zones is None else [z.strip() for z in args.zones.split(",")]
    crt, key = pki.issue(args.dir, args.role, args.name, days=args.days, force=args.force, zones=zones)
    identity = pki.identity_from_pem(crt.read_bytes())
    ca = pki.ca_files(args.dir)["ca_crt"]
    listed = sorted(identity.zones) if identity.zones is not None else None
    shown = f" (zones {', '.join(listed)})" if listed else ""
    _emit(
        args,
        {"cert": str(crt), "key": str(key), "ca": str(ca), "spiffe_id": identity.spiffe_id, "zones": listed},
        f"issued {identity.spiffe_id}{shown}: {crt} {key} (copy these with {ca} to the machine)",
    )
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    """``outrider pki fingerprint``: returns 0, raises InvalidArgument for a missing or bad ca.crt."""
    from outrider.errors import InvalidArgument

    ca = pki.ca_files(args.dir)["ca_crt"]
    try:
        pem = ca.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{ca}: cannot read the CA certificate: {exc.strerror or exc}") from None
    try:
        value = pki.fingerprint(pem)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{ca}: {exc}") from None
    _emit(args, {"fingerprint": value, "ca": str(ca)}, value)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    """``outrider pki bundle``: returns 0, raises InvalidArgument on bad input."""
    from outrider.cabundle import write_bundle

    cas = write_bundle(args.out, args.sources, force=args.force)
    _emit(
        args,
        {
            "bundle": str(args.out),
            "cas": [
                {"subject": c.subject, "sha256": c.sha256, "not_after": f"{c.not_after:%Y-%m-%dT%H:%M:%SZ}"}
                for c in cas
            ],
        },
        f"wrote {len(cas)} CA certificate(s) to {args.out}: "
        + "; ".join(f"{c.subject} (sha256 {c.sha256[:16]}...)" for c in cas),
    )
    return 0
