"""``outrider agents`` and ``outrider drain``: the agents, their health, and draining one.

Wired in by ``outrider.cli``. ``--json`` shapes are a stable contract (keys are only
ever added): ``agents`` prints a list of :func:`agent_json` objects, ``drain`` one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _client(args: argparse.Namespace) -> Any:
    from outrider.client import Client

    return Client.from_env(scheduler=args.scheduler, ca=args.ca, cert=args.cert, key=args.key, config=args.config)


def health(a: Any) -> str:
    """What the HEALTH column says: ok, draining, or unhealthy with the reason."""
    if a.unhealthy:
        return f"unhealthy: {a.unhealthy}"
    return "draining" if a.draining else "ok"


def agent_json(a: Any) -> dict[str, Any]:
    c = a.capabilities
    return {
        "name": a.name,
        "identity": a.identity,
        "state": a.state,
        "running": a.running,
        "clock_suspect": a.clock_suspect,
        "clock_skew_s": a.clock_skew_s,
        "free_slots": a.free_slots,
        "last_seen": a.last_seen,
        "registered_at": a.registered_at,
        "draining": a.draining,
        "unhealthy": a.unhealthy,
        "instance_id": a.instance_id,
        "revoked": a.revoked,
        "revoked_at": a.revoked_at,
        "revoked_by": a.revoked_by,
        "transfers": [
            {"digest": t.digest, "direction": t.direction, "done_bytes": t.done_bytes, "total_bytes": t.total_bytes}
            for t in a.transfers
        ],
        "capabilities": {
            "cpu_cores": c.cpu_cores,
            "arch": c.arch,
            "cpu_model": c.cpu_model,
            "memory_bytes": c.memory_bytes,
            "disk_bytes": c.disk_bytes,
            "disk_free_bytes": c.disk_free_bytes,
            "os": c.os,
            "os_release": c.os_release,
            "python_version": c.python_version,
            "hostname": c.hostname,
            "slots": c.slots,
            "queued_jobs": c.queued_jobs,
            "labels": dict(c.labels),
            "agent_version": c.agent_version,
            "gpu_probe": c.gpu_probe,
            "zones": list(c.zones),
            "bandwidth_bps": c.bandwidth_bps,
            "rtt_s": c.rtt_s,
            "cached_artifacts": len(c.cached),
            "cached_bytes": sum(x.size for x in c.cached),
            "power": {
                "has_battery": c.power.has_battery,
                "on_battery": c.power.on_battery,
                "battery_percent": c.power.battery_percent,
            },
            "gpus": [
                {
                    "index": g.index,
                    "model": g.model,
                    "memory_bytes": g.memory_bytes,
                    "driver": g.driver,
                    "uuid": g.uuid,
                    "compute_capability": g.compute_capability,
                }
                for g in c.gpus
            ],
        },
        "clock": [{"source": s.source, "offset_s": s.offset_s, "uncertainty_s": s.uncertainty_s} for s in a.clock],
    }


def cmd_agents(args: argparse.Namespace) -> int:
    with _client(args) as client:
        agents = client.list_agents()
    if args.json:
        _json([agent_json(a) for a in agents])
        return 0
    rows = []
    for a in agents:
        c = a.capabilities
        best = min(a.clock, key=lambda s: s.uncertainty_s, default=None)
        clock = f"{best.offset_s * 1000:+.1f}ms ±{best.uncertainty_s * 1000:.1f}" if best else "-"
        if a.clock_suspect:
            clock += " clock_suspect"
        gpus = f"{len(c.gpus)}x {c.gpus[0].model}" if c.gpus else "0"
        rows.append(
            (
                a.name,
                "revoked" if a.revoked else a.state,
                f"{a.running}/{c.slots}" + (f" +{c.queued_jobs} queued" if c.queued_jobs else ""),
                str(c.cpu_cores),
                _bytes(c.memory_bytes),
                gpus,
                ",".join(c.zones) or "-",
                ",".join(f"{k}={v}" for k, v in sorted(c.labels.items())) or "-",
                clock,
                health(a),
            )
        )
    _table(rows, ("AGENT", "STATE", "RUNNING", "CPUS", "MEMORY", "GPUS", "ZONES", "LABELS", "CLOCK", "HEALTH"))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        a = client.drain(args.agent)
    if args.json:
        _json(agent_json(a))
    else:
        print(f"agent {a.name} draining: no new work; its running stages checkpoint and move elsewhere")
    return 0


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
