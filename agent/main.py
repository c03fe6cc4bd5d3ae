"""``outrider-agent``: the agent daemon.

Every flag has a key of the same name (dashes become underscores) in the TOML
file given with ``--config``; flags win over the file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from outrider import logfmt
from outrider.config import (
    absolute_paths,
    load_toml,
    merge_config,
    parse_bytes,
    parse_duration,
    parse_labels,
)
from outrider.errors import ConfigError, OutriderError
from outrider.targets import parse_targets

#: What a zone name may be made of (it is compared with residency tags as is).
_ZONE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def parse_zones(value: Any) -> list[str]:
    """Zones from a list of names or a comma-separated string; ValueError naming the bad one.

    Each name is non-empty and made of letters, digits, '.', '_' and '-'.
    Duplicates are dropped (first kept); an empty string or list means no zones.
    """
    if isinstance(value, str):
        items = [p.strip() for p in value.split(",")] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f'expected a list of zone names like ["eu", "eu-west"], got {value!r}')
    zones: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"zone names must be strings, got {item!r}")
        if not item or not set(item) <= _ZONE_CHARS:
            raise ValueError(f"invalid zone name {item!r}: use letters, digits, '.', '_' and '-' (non-empty)")
        if item not in zones:
            zones.append(item)
    return zones


#: The settings that name files or directories: resolved to absolute paths at load time
#: (flags against the working directory, the TOML file's against its own directory), so
#: no relative path ever reaches a stage, whose working directory is its work dir.
PATH_KEYS = ("ca", "cert", "key", "pki_dir", "state_dir", "preemption_file", "slurm_work_dir")


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at the top: the running agent sheds it after start-up

    p = argparse.ArgumentParser(prog="outrider-agent", description="Run an Outrider agent: pull work, run stages.")
    p.add_argument("--config", help="TOML file with the same keys as the flags")
    p.add_argument("--scheduler", help="scheduler HOST:PORT, or several comma-separated (high availability)")
    p.add_argument("--ca", help="CA certificate (PEM)")
    p.add_argument("--cert", help="this agent's certificate (PEM)")
    p.add_argument("--key", help="this agent's private key (PEM)")
    p.add_argument("--pki-dir", help="directory holding ca.crt, NAME.crt, NAME.key (with --name)")
    p.add_argument("--name", help="agent name: the certificate files' stem in --pki-dir")
    p.add_argument("--labels", help="k=v,k=v labels the matcher selects on")
    p.add_argument("--slots", type=int, help="tasks to run at once (default: one per CPU core)")
    p.add_argument("--state-dir", help="directory for the artifact cache and work dirs")
    p.add_argument("--ntp-servers", help="comma-separated NTP servers (host or host:port) to measure clock offset")
    p.add_argument("--kill-grace", help="time between SIGTERM and SIGKILL when stopping a stage, e.g. 5s")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="json lines, readable text, or auto: json unless stderr is a terminal (the default)",
    )
    p.add_argument(
        "--drain-grace", help="when draining, how long a stage has after SIGTERM to checkpoint and exit, e.g. 60s"
    )
    p.add_argument(
        "--preemption-file", help="drain when this file appears (a spot instance's preemption notice); default: none"
    )
    p.add_argument("--zones", help="comma-separated data-residency zones this agent sits in, e.g. eu,eu-west")
    p.add_argument(
        "--bandwidth-probe-bytes",
        help="size of the start-up bandwidth probe against the scheduler, e.g. 4MiB (0: none)",
    )
    p.add_argument(
        "--cache-max-bytes", help="bound on the artifact cache, e.g. 10GiB; least recently used go first (0: no bound)"
    )
    p.add_argument(
        "--max-extract-bytes",
        help="ceiling on what one directory artifact may expand to in a work dir, e.g. 10GiB (0: none)",
    )
    p.add_argument("--stage-user", help="run stages as this user (name or uid); needs root or CAP_SETUID and co.")
    p.add_argument("--stage-group", help="the stages' group (name or gid; default: the stage user's own)")
    p.add_argument("--executor", help='where stages run: "local" (default) or "slurm" (as Slurm jobs)')
    p.add_argument("--slurm-partition", help="with --executor slurm: the partition jobs are submitted to")
    p.add_argument("--slurm-account", help="with --executor slurm: the account jobs are charged to (default: none)")
    p.add_argument(
        "--slurm-work-dir", help="with --executor slurm: a directory shared with the compute nodes (the work dirs)"
    )
    p.add_argument("--slurm-extra-args", help='with --executor slurm: more sbatch arguments, e.g. "--qos=low"')
    return p


def load_config(argv: list[str] | None = None) -> Any:
    from agent.config import AgentConfig

    args = build_parser().parse_args(argv)
    defaults = dataclasses.asdict(AgentConfig())  # every field has a default
    file_values = load_toml(args.config) if args.config else {}
    source = args.config or "flags"
    flags = vars(args)
    if args.config:
        absolute_paths(file_values, PATH_KEYS, os.path.dirname(os.path.abspath(args.config)))
    absolute_paths(flags, PATH_KEYS, os.getcwd())
    try:
        if flags.get("labels") is not None:
            flags["labels"] = parse_labels(flags["labels"])
        if flags.get("ntp_servers") is not None:
            flags["ntp_servers"] = [s.strip() for s in flags["ntp_servers"].split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigError(f"flags: {exc}") from None
    if flags.get("zones") is not None:
        try:
            flags["zones"] = parse_zones(flags["zones"])
        except ValueError as exc:
            raise ConfigError(f"flags: --zones: {exc}") from None
    cfg = merge_config(file_values, flags, defaults, source)
    if isinstance(cfg["labels"], str):
        cfg["labels"] = parse_labels(cfg["labels"])
    if not isinstance(cfg["labels"], dict) or not all(isinstance(v, str) for v in cfg["labels"].values()):
        raise ConfigError(f"{source}: labels must be a table of strings")
    cfg["log_format"] = logfmt.check_format(cfg["log_format"], source)
    for key in ("kill_grace", "drain_grace"):
        try:
            cfg[key] = parse_duration(cfg[key])
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    try:
        cfg["zones"] = parse_zones(cfg["zones"])
    except ValueError as exc:
        raise ConfigError(f"{source}: zones: {exc}") from None
    for key in ("bandwidth_probe_bytes", "cache_max_bytes", "max_extract_bytes"):
        try:
            cfg[key] = parse_bytes(cfg[key])
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    if cfg["pki_dir"] and cfg["name"]:
        from outrider.tls import pki_paths

        for field, path in zip(("ca", "cert", "key"), pki_paths(cfg["pki_dir"], cfg["name"]), strict=True):
            cfg[field] = cfg[field] or str(path)
    missing = [k for k in ("scheduler", "ca", "cert", "key") if not cfg[k]]
    if missing:
        raise ConfigError(f"{source}: missing {', '.join(missing)} (give --ca/--cert/--key or --pki-dir and --name)")
    try:
        parse_targets(cfg["scheduler"])  # HOST:PORT, or several comma-separated (docs/ha.md)
    except ValueError as exc:
        raise ConfigError(f"{source}: scheduler: {exc}") from None
    if not isinstance(cfg["slots"], int) or cfg["slots"] < 0:
        raise ConfigError(f"{source}: slots must be a non-negative integer, got {cfg['slots']!r}")
    check_executor(cfg, source)
    from agent.renewal import recover
    from outrider.tls import read_pem_files

    recover(cfg["cert"], cfg["key"])  # a renewal a crash interrupted: finish it, so the pair matches
    read_pem_files(cfg["ca"], cfg["cert"], cfg["key"])  # fail now, naming the file, not at connect time
    from agent.stageuser import resolve

    for key in ("stage_user", "stage_group"):
        cfg[key] = str(cfg[key] if cfg[key] is not None else "")
    resolve(cfg["stage_user"], cfg["stage_group"])  # no such user, or no way to switch to it: fail now
    return AgentConfig(**cfg)


def check_executor(cfg: dict[str, Any], source: str) -> None:
    """``executor`` and the ``slurm_*`` keys: ConfigError naming the bad one."""
    import shlex

    if cfg["executor"] not in ("local", "slurm"):
        raise ConfigError(f'{source}: executor must be "local" or "slurm", got {cfg["executor"]!r}')
    extra = cfg["slurm_extra_args"]
    if isinstance(extra, str):
        try:
            extra = shlex.split(extra)
        except ValueError as exc:
            raise ConfigError(f"{source}: slurm_extra_args: {exc}") from None
    if not isinstance(extra, list) or not all(isinstance(a, str) and a.startswith("-") for a in extra):
        raise ConfigError(f'{source}: slurm_extra_args must be a list of sbatch options like ["--qos=low"]')
    cfg["slurm_extra_args"] = extra
    for key in ("slurm_partition", "slurm_account", "slurm_work_dir"):
        if not isinstance(cfg[key], str):
            raise ConfigError(f"{source}: {key} must be a string, got {cfg[key]!r}")
    if cfg["executor"] != "slurm":
        return
    missing = [k for k in ("slurm_partition", "slurm_work_dir") if not cfg[k]]
    if missing:
        raise ConfigError(f'{source}: executor = "slurm" needs {" and ".join(missing)}')
    if cfg["stage_user"]:
        raise ConfigError(f'{source}: stage_user cannot be combined with executor = "slurm" (jobs run as the agent)')


def build_join_parser() -> argparse.ArgumentParser:
    import argparse

    from agent.config import AgentConfig

    p = argparse.ArgumentParser(
        prog="outrider-agent join",
        description="Enrol this machine with a join token (`outrider token create`), pinning the scheduler's CA, "
        "then serve as an agent (other agent flags, such as --slots, pass through).",
    )
    p.add_argument("--scheduler", required=True, help="the scheduler's enrolment port, HOST:PORT (its enroll_listen)")
    p.add_argument("--token", required=True, help="the join token `outrider token create` printed")
    p.add_argument(
        "--ca-fingerprint",
        required=True,
        metavar="sha256:HEX",
        help="the CA's fingerprint, as `outrider pki fingerprint DIR` prints it (bare or colon-separated hex too)",
    )
    p.add_argument("--name", help="this agent's name, spiffe://<domain>/agent/<name> (default: the host name)")
    p.add_argument("--state-dir", default=AgentConfig().state_dir, help="where the key, certificate and config go")
    p.add_argument("--enroll-only", action="store_true", help="exit after enrolling (serve later with --config)")
    p.add_argument("--force", action="store_true", help="replace an enrolment already in the state dir")
    return p


def join_main(argv: list[str]) -> tuple[int, list[str] | None]:
    """``outrider-agent join``: (exit code, the agent's argv to serve with, or None to exit)."""
    import socket
    from pathlib import Path

    from agent.enroll import join

    args, rest = build_join_parser().parse_known_args(argv)
    build_parser().parse_args(rest)  # the agent flags passed through: a typo stops here, before the token is spent
    name = args.name or socket.gethostname().split(".")[0]
    try:
        done = join(args.scheduler, args.token, args.ca_fingerprint, name, Path(args.state_dir), args.force)
    except OutriderError as exc:
        print(f"outrider-agent join: error: {exc}", file=sys.stderr)
        return 2, None
    import time

    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done.not_after))
    labels = ",".join(f"{k}={v}" for k, v in sorted(done.labels.items())) or "none"
    print(
        f"enrolled as {done.spiffe_id} (labels {labels}; zones {','.join(done.zones) or 'none'}; certificate "
        f"valid until {expiry}, renewed automatically); scheduler {done.scheduler}; config {done.config}",
        flush=True,
    )
    if args.enroll_only:
        return 0, None
    return 0, ["--config", str(done.config), *rest]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["join"]:  # enrol first (it needs Python's ssl, once), then serve as any agent
        code, argv = join_main(argv[1:])
        if argv is None:
            return code
    # The agent talks only gRPC, which brings its own TLS (BoringSSL). Python's ssl
    # module, which asyncio (imported by grpc) loads just in case, would add ~4 MB
    # (libssl, libcrypto) to every idle agent on every edge box: keep it out. Done
    # here, in the program's entry point, so importing this module changes nothing.
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        cfg = load_config(argv)
    except OutriderError as exc:
        print(f"outrider-agent: error: {exc}", file=sys.stderr)
        return 2
    logfmt.setup(cfg.log_format, cfg.log_level)
    import asyncio

    from agent.daemon import Agent
    from agent.memory import shed

    shed("argparse", "gettext")  # flags are parsed; an idle agent on an edge box stays small

    from agent import certcheck

    try:
        certcheck.check(cfg.cert, cfg.scheduler)  # expired while offline: say so, do not dial forever
        agent = Agent(cfg)
    except certcheck.CertificateNotValid as exc:
        print(f"outrider-agent: error: {exc}", file=sys.stderr)
        return certcheck.exit_code(exc)
    except OutriderError as exc:  # its state dir is held by another agent, say
        print(f"outrider-agent: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(agent.run())
    except certcheck.CertificateNotValid as exc:  # it expired while running, before a renewal
        print(f"outrider-agent: error: {exc}", file=sys.stderr)
        return certcheck.exit_code(exc)
    return agent.exit_code  # 0, or EXIT_REVOKED (77) once an admin revoked this agent


if __name__ == "__main__":
    sys.exit(main())
