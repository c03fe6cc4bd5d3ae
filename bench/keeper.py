#!/usr/bin/env python3
"""Stage keeper benchmark: what the keeper costs per stage, beside a bare spawn.

Starts a real keeper (``agent/keeper.py``) on a temporary state dir, drives it over its
socket protocol as an agent does (``hello``, then ``spawn`` of ``true`` with two stages in
flight, each next one sent when an ``exited`` arrives, older exits forgotten), and reads
the keeper's own CPU time. Then the floor: ``os.posix_spawn`` + ``waitpid`` of the same
program in a plain loop in this process.

    python bench/keeper.py            # figures
    python bench/keeper.py --json     # one JSON object

Figures:
  keeper_stages_per_s          stages started and reaped per second, two in flight
  keeper_cpu_ms_per_stage      the keeper's user + system CPU per stage
  floor_cpu_ms_per_spawn       posix_spawn + waitpid in a bare loop (user + system)
  stage_cpu_ms                 the stage itself (``true``): exec and run, as reaped
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
KEEPER = ROOT / "agent" / "keeper.py"


def _keeper(state: Path, stages: int) -> dict[str, float]:
    work = state / "w"
    (work / ".outrider").mkdir(parents=True)
    out, err = work / ".outrider" / "stdout", work / ".outrider" / "stderr"
    out.touch()
    err.touch()
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(KEEPER), str(state)], cwd=state, stdin=subprocess.DEVNULL)
    try:
        sock_path = state / "keeper.sock"
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the keeper did not start")
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(sock_path))
            f = sock.makefile("rwb")

            def send(msg: dict[str, Any]) -> None:
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()

            send({"op": "hello", "env": dict(os.environ), "grace": 5.0})
            f.readline()  # the stages it keeps: none

            def spawn(i: int) -> None:
                send(
                    {
                        "op": "spawn",
                        "key": f"k{i}",
                        "argv": ["true"],
                        "env": {"OUTRIDER_TASK": f"t{i}"},
                        "cwd": str(work),
                        "stdout": str(out),
                        "stderr": str(err),
                        "renewed": time.monotonic(),
                        "ttl": 60.0,
                        "forget": [f"k{i - 2}"] if i >= 2 else [],
                    }
                )

            keeper = psutil.Process(proc.pid)
            c0 = keeper.cpu_times()
            t0 = time.perf_counter()
            sent = done = 0
            for _ in range(2):
                spawn(sent)
                sent += 1
            while done < stages:
                msg = json.loads(f.readline())
                if msg.get("op") == "exited":
                    done += 1
                    if sent < stages:
                        spawn(sent)
                        sent += 1
            dt = time.perf_counter() - t0
            c1 = keeper.cpu_times()
    finally:
        proc.kill()
        proc.wait()
    return {
        "keeper_stages_per_s": round(stages / dt, 1),
        "keeper_cpu_ms_per_stage": round((c1.user + c1.system - c0.user - c0.system) * 1000 / stages, 3),
        "stage_cpu_ms": round((c1.children_user + c1.children_system - c0.children_user - c0.children_system)
                              * 1000 / stages, 3),
    }


def _floor(stages: int) -> float:
    program = shutil.which("true") or "/bin/true"
    env = dict(os.environ)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(stages):
        pid = os.posix_spawn(program, ["true"], env, setsid=True)
        os.waitpid(pid, 0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000 / stages, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Outrider stage keeper benchmark")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--stages", type=int, default=2000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="outrider-keeper-bench-") as tmp:
        out: dict[str, float] = _keeper(Path(tmp), args.stages)
    out["floor_cpu_ms_per_spawn"] = _floor(args.stages)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for key, value in out.items():
            print(f"{key:<26} {value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
