"""``outrider-scheduler``: the scheduler daemon.

Every flag has a key of the same name (dashes become underscores) in the TOML
file given with ``--config``; flags win over the file. Every path is made absolute
at load time: a flag's against the working directory, the file's against the
file's own directory (so a unit file and a shell agree on what a path means).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from typing import Any

from outrider import logfmt
from outrider.certzones import validate_zones
from outrider.config import absolute_paths, load_toml, merge_config, parse_address, parse_bytes, parse_duration
from outrider.errors import ConfigError, InvalidArgument, OutriderError
from outrider.pki import validate_name
from outrider.tls import MAX_MESSAGE_BYTES
from scheduler import otlp
from scheduler.server import Scheduler, SchedulerConfig
from scheduler.store.select import is_postgres
from scheduler.store.select import normalise as normalise_database

#: The settings that name files or directories (see the module docstring).
PATH_KEYS = ("state_dir", "pki_dir", "ready_file", "database_password_file", "artifact_dir", "log_dir")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outrider-scheduler", description="Run the Outrider scheduler daemon.")
    p.add_argument("--config", help="TOML file with the same keys as the flags")
    p.add_argument("--listen", help="HOST:PORT to serve on (port 0 picks a free port); default 0.0.0.0:7443")
    p.add_argument("--state-dir", help="directory for the database, artifacts and logs")
    p.add_argument("--pki-dir", help="directory holding ca.crt, scheduler.crt, scheduler.key")
    p.add_argument(
        "--database",
        help="the store: a path or sqlite:///PATH (SQLite; default STATE_DIR/outrider.db), or "
        "postgresql://USER@HOST/DB (PostgreSQL, a libpq URI without a password; for TLS add "
        "?sslmode=verify-full&sslrootcert=/etc/outrider/pg-ca.crt)",
    )
    p.add_argument(
        "--database-password-file",
        help="file whose first line is the PostgreSQL password (else PGPASSWORD, PGPASSFILE or ~/.pgpass)",
    )
    p.add_argument(
        "--artifact-dir",
        help="the artifact store (default STATE_DIR/artifacts); with several replicas (docs/ha.md) one "
        "directory they all reach, such as an NFS mount",
    )
    p.add_argument("--log-dir", help="stage logs (default STATE_DIR/logs); shared by replicas like --artifact-dir")
    p.add_argument(
        "--advertise",
        help="HOST:PORT the other replicas name as this one's when it leads (PostgreSQL, docs/ha.md); default the "
        "listen address, or this machine's name and the port when listening on 0.0.0.0",
    )
    p.add_argument("--ready-file", help="write HOST:PORT here once serving (a standby: once it leads)")
    p.add_argument("--lease-ttl", help="lease time-to-live, e.g. 15s")
    p.add_argument("--heartbeat-interval", help="how often agents renew leases, e.g. 3s")
    p.add_argument("--placement-wait", help="how long a task may wait for a clearly better agent, e.g. 5s")
    p.add_argument("--max-queue-depth", type=int, help="refuse submissions past this many open tasks (0: no limit)")
    p.add_argument("--max-pipeline-tasks", type=int, help="refuse a pipeline with more tasks than this; default 100000")
    p.add_argument(
        "--max-pipeline-bytes", help="refuse a pipeline whose encoded spec is larger, e.g. 32MiB (the default)"
    )
    p.add_argument("--infeasible-timeout", help="fail a task that no agent can run after this long, e.g. 10m")
    p.add_argument("--max-clock-offset", help="mark agents whose clock offset + uncertainty exceeds this, e.g. 1s")
    p.add_argument(
        "--require-attested-zones",
        action="store_true",
        default=None,
        help="refuse zones an agent declares unless its certificate or [agent_zones] names them",
    )
    p.add_argument(
        "--enroll-listen",
        help="HOST:PORT of the enrolment port, where `outrider-agent join` trades a join token for a certificate "
        "(TLS without client certificates; needs pki_dir/ca.key); default: empty, no enrolment",
    )
    p.add_argument(
        "--http-listen",
        help="HOST:PORT of the read-only web dashboard (docs/dashboard.md); :PORT alone means 127.0.0.1:PORT. "
        "Loopback: plain HTTP, the local operator sees every run; any other address: HTTPS requiring a client "
        "certificate of our CA (admin: every run, submitter: its own). Default: auto, 127.0.0.1:7480 when that "
        "port is free (a warning when not); off or empty: no HTTP server",
    )
    p.add_argument("--agent-cert-ttl", help="lifetime of the agent certificates this scheduler signs; default 24h")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="json lines, readable text, or auto: json unless stderr is a terminal (the default)",
    )
    p.add_argument("--tracing", choices=("on", "off"), help="record each run's trace (default on; TOML tracing)")
    p.add_argument(
        "--otlp-endpoint",
        help="also export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 "
        "(needs the otel extra: pip install 'outrider[otel]'); default: empty, no export",
    )
    p.add_argument(
        "--metrics",
        choices=("on", "off"),
        help="keep Prometheus metrics and serve them on the HTTP server's /metrics (default on; TOML metrics = true)",
    )
    p.add_argument(
        "--alert-disk-used", help="alert when an agent's state dir disk is past this fraction used; default 0.9"
    )
    p.add_argument("--alert-disk-free", help="alert when an agent's state dir disk has less free, e.g. 1GiB (default)")
    return p


def load_config(argv: list[str] | None = None) -> SchedulerConfig:
    args = build_parser().parse_args(argv)
    defaults = dataclasses.asdict(SchedulerConfig())
    file_values = load_toml(args.config) if args.config else {}
    source = args.config or "flags"
    flags = vars(args)
    if args.config:
        absolute_paths(file_values, PATH_KEYS, os.path.dirname(os.path.abspath(args.config)))
        if "database" in file_values:  # a relative SQLite path: against the file's directory
            base = os.path.dirname(os.path.abspath(args.config))
            file_values["database"] = normalise_database(file_values["database"], base, source)
    absolute_paths(flags, PATH_KEYS, os.getcwd())
    if flags.get("database") is not None:
        flags["database"] = normalise_database(flags["database"], os.getcwd(), "--database")
    merged = merge_config(file_values, flags, defaults, source)
    if merged["database_password_file"] and not is_postgres(merged["database"]):
        raise ConfigError(f"{source}: database_password_file is for a PostgreSQL database (database = postgresql://…)")
    absolute_paths(merged, PATH_KEYS, os.getcwd())  # the defaults are absolute already; this is for certainty
    for key in (
        "lease_ttl",
        "heartbeat_interval",
        "placement_wait",
        "infeasible_timeout",
        "max_clock_offset",
        "agent_cert_ttl",
    ):
        try:
            merged[key] = parse_duration(merged[key])
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    if merged["heartbeat_interval"] <= 0 or merged["lease_ttl"] <= merged["heartbeat_interval"]:
        raise ConfigError(f"{source}: lease_ttl must be longer than heartbeat_interval (and both positive)")
    if not isinstance(merged["max_queue_depth"], int) or merged["max_queue_depth"] < 0:
        raise ConfigError(
            f"{source}: max_queue_depth must be a non-negative integer, got {merged['max_queue_depth']!r}"
        )
    tasks = merged["max_pipeline_tasks"]
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ConfigError(f"{source}: max_pipeline_tasks must be a positive integer, got {tasks!r}")
    try:
        merged["max_pipeline_bytes"] = parse_bytes(merged["max_pipeline_bytes"])
    except ValueError as exc:
        raise ConfigError(f"{source}: max_pipeline_bytes: {exc}") from None
    if not 1024 <= merged["max_pipeline_bytes"] <= MAX_MESSAGE_BYTES - (1 << 20):
        raise ConfigError(
            f"{source}: max_pipeline_bytes must be from 1KiB to {(MAX_MESSAGE_BYTES >> 20) - 1}MiB "
            f"(under the largest gRPC message, {MAX_MESSAGE_BYTES >> 20}MiB), got {merged['max_pipeline_bytes']}"
        )
    merged["agent_zones"] = agent_zones(merged["agent_zones"], source)
    observability(merged, source)
    merged["log_format"] = logfmt.check_format(merged["log_format"], source)
    otlp.check_options(merged, source)
    if not isinstance(merged["require_attested_zones"], bool):
        raise ConfigError(f"{source}: require_attested_zones must be true or false")
    try:
        parse_address(merged["listen"])
    except ValueError as exc:
        raise ConfigError(f"{source}: listen: {exc}") from None
    if not isinstance(merged["enroll_listen"], str):
        raise ConfigError(f"{source}: enroll_listen must be a HOST:PORT string (empty: no enrolment)")
    if merged["enroll_listen"]:
        try:
            parse_address(merged["enroll_listen"])
        except ValueError as exc:
            raise ConfigError(f"{source}: enroll_listen: {exc}") from None
    if not isinstance(merged["advertise"], str):
        raise ConfigError(f"{source}: advertise must be a HOST:PORT string (empty: the listen address)")
    if merged["advertise"]:
        try:
            _, port = parse_address(merged["advertise"])
        except ValueError as exc:
            raise ConfigError(f"{source}: advertise: {exc}") from None
        if port == 0:
            raise ConfigError(f"{source}: advertise: port 0 is not an address others can dial")
    merged["http_listen"] = http_listen(merged["http_listen"], source)
    if not 2.0 <= merged["agent_cert_ttl"] <= 366 * 86400:
        raise ConfigError(f"{source}: agent_cert_ttl must be from 2s to 366d, got {merged['agent_cert_ttl']:g}s")
    return SchedulerConfig(**merged)


def observability(merged: dict[str, Any], source: str) -> None:
    """``metrics`` (true/false, or on/off from the flag) and the disk alert's thresholds, checked in place."""
    switch = {"on": True, "off": False, True: True, False: False}
    if not isinstance(merged["metrics"], (str, bool)) or merged["metrics"] not in switch:
        raise ConfigError(f"{source}: metrics must be true or false (--metrics on|off), got {merged['metrics']!r}")
    merged["metrics"] = switch[merged["metrics"]]
    used = merged["alert_disk_used"]
    try:
        used = float(used) if not isinstance(used, bool) else None
    except (TypeError, ValueError):
        used = None
    if used is None or not 0.0 < used <= 1.0:
        raise ConfigError(
            f"{source}: alert_disk_used must be a fraction above 0 and at most 1, like 0.9, "
            f"got {merged['alert_disk_used']!r}"
        )
    merged["alert_disk_used"] = used
    try:
        merged["alert_disk_free"] = parse_bytes(merged["alert_disk_free"])
    except ValueError as exc:
        raise ConfigError(f"{source}: alert_disk_free: {exc}") from None


def http_listen(value: Any, source: str) -> str:
    """``http_listen``: "auto" (the default: 127.0.0.1:7480 if free), empty or "off" (no HTTP server),
    HOST:PORT, or :PORT (loopback); ConfigError otherwise."""
    if not isinstance(value, str):
        raise ConfigError(f"{source}: http_listen must be a HOST:PORT string (empty: no dashboard)")
    if value in ("", "off"):
        return ""
    if value == "auto":
        return value
    if value.startswith(":"):
        value = "127.0.0.1" + value
    try:
        parse_address(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: http_listen: {exc}") from None
    return value


def agent_zones(value: Any, source: str) -> dict[str, list[str]]:
    """``[agent_zones]``: agent name -> the zones the scheduler gives it (checked as
    ``outrider pki issue --zones`` checks them); ConfigError naming the bad entry."""
    if not isinstance(value, dict):
        raise ConfigError(f'{source}: agent_zones must be a table, like [agent_zones] edge-1 = ["eu", "eu-west"]')
    out = {}
    for name, zones in value.items():
        try:
            validate_name(name)
            if not isinstance(zones, list):
                raise InvalidArgument(f'expected a list of zone names like ["eu", "eu-west"], got {zones!r}')
            out[name] = sorted(validate_zones(zones, f"agent_zones.{name}"))
        except InvalidArgument as exc:
            raise ConfigError(f"{source}: agent_zones: {name}: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
    except OutriderError as exc:
        print(f"outrider-scheduler: error: {exc}", file=sys.stderr)
        return 2
    logfmt.setup(cfg.log_format, cfg.log_level)
    try:
        asyncio.run(Scheduler(cfg).run())
    except OutriderError as exc:
        print(f"outrider-scheduler: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
