"""Taking over from a previous agent process (a crash, a reboot, ``systemctl restart``).

What the next agent process finds, and what it does with it::

    lease record (journal) ─┬─ lease lapsed ──────────────────────────▶ dropped; its process killed
                            ├─ its process runs (the keeper has it) ──▶ re-attached: watched to its end
                            ├─ it ended (the keeper kept its code) ───▶ re-attached: its result reported
                            └─ no process (reboot, keeper gone), or ──▶ resumed: started again under the
                               it ended because the agent stopped it    same lease, from its newest
                                                                         checkpoint
    a stage the keeper runs without a lease record ──────────────────▶ killed (nothing to report it against)
    a stage process nobody supervises (in the work root) ────────────▶ killed (agent.runner.reap_orphans)
    outbox ───────────────────────────────────────────────────────────▶ delivered on the first stream

A lease is judged by the freshest renewal known: the keeper's own record of it (it got
every renewal up to the old process's end), else the last renewal written to the journal.
Register then claims every lease kept; the scheduler's answer stops those it no longer
knows (:meth:`agent.supervisor.Supervisor.registered`).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import keeper as keeper_mod
from agent.journal import LeaseRecord
from agent.stage import Stage, StageKey, key_text, parse_key_text

__all__ = ["Plan", "plan", "probe_keeper"]

log = logging.getLogger(__name__)

#: A lease whose TTL is not known (nothing was ever renewed) is judged by this one.
DEFAULT_TTL_S = 15.0


@dataclass
class Plan:
    """What to do with what a previous agent process left."""

    reattach: list[Stage] = field(default_factory=list)
    resume: list[Stage] = field(default_factory=list)
    #: Lease records to drop (lapsed).
    dropped: list[StageKey] = field(default_factory=list)
    #: Keeper stages to kill and forget (lapsed, or unknown).
    kill: list[str] = field(default_factory=list)

    @property
    def keep(self) -> tuple[Path, ...]:
        """Work dirs that must stay: those of the re-attached stages, and those the resumed
        ones take their newest checkpoint from."""
        dirs = [s.workdir for s in self.reattach] + [s.resume_dir for s in self.resume]
        return tuple(d for d in dirs if d is not None)


def plan(
    records: dict[StageKey, LeaseRecord],
    renewed: dict[str, float],
    keeper_stages: list[dict[str, Any]],
    now_wall: float,
    now_mono: float,
) -> Plan:
    """Decide, for each lease record and each stage the keeper holds (module docstring)."""
    out = Plan()
    held = {parse_key_text(s["key"]): s for s in keeper_stages}
    ttl = renewed.get("ttl") or DEFAULT_TTL_S
    for key, rec in records.items():
        k = held.pop(key, None)
        if k is not None:
            last_mono = float(k["renewed"])
            valid = not k["expired"] and now_mono <= last_mono + float(k["ttl"] or ttl)
        else:
            last_wall = max(rec.started, renewed.get("wall", 0.0))
            last_mono = now_mono - (now_wall - last_wall)
            valid = now_wall <= last_wall + ttl
        if not valid:
            out.dropped.append(key)
            if k is not None:
                out.kill.append(key_text(key))
            log.info("lease of %s/%s attempt %d lapsed while the agent was away: dropped", *key)
            continue
        stage = Stage(rec.assignment, last_renewed=last_mono, started_at=rec.started)
        if k is not None and k.get("stopped") and k["code"] is not None:
            # The previous process was stopping it (and did not live to say so): its exit
            # says nothing about the task. Run it again from its checkpoint, same lease.
            out.kill.append(key_text(key))  # (forgets it)
            k = None
        if k is not None and rec.workdir:
            stage.pid = int(k["pid"])
            stage.workdir = Path(rec.workdir)
            out.reattach.append(stage)
            state = "running" if k["code"] is None else f"ended with {k['code']}"
            log.info("re-attaching %s/%s attempt %d (pid %d, %s)", *key, stage.pid, state)
        else:
            stage.resume_dir = Path(rec.workdir) if rec.workdir else None
            out.resume.append(stage)
            log.info("resuming %s/%s attempt %d from its latest checkpoint (its process is gone)", *key)
    for s in held.values():
        out.kill.append(s["key"])
    return out


def probe_keeper(state_dir: Path, env: dict[str, str], grace: float, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The stages a running keeper holds (none if no keeper runs); blocking, for start-up."""
    path = state_dir / keeper_mod.SOCKET_NAME
    if not path.exists():
        return []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": "hello", "env": env, "grace": grace}).encode() + b"\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(1 << 16)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("op") == "stages":
                    return list(msg["stages"])
    except OSError as exc:
        log.info("no stage keeper to take over from (%s)", exc)
    finally:
        sock.close()
    return []
