"""A stage that does numbered steps, checkpoints every k of them, and keeps its own record.

The fault suite judges the system by what this stage writes, not by what the system
says about itself: every step appends one line to a record file *outside* the work dir
(``$FAULTS_RECORDS/<run>__<task>.rec``, a directory the test shares with every host), so
a step done twice, by a resumed attempt or by a stale copy that should have stopped,
shows up there whatever the scheduler believes. A line reads::

    TASK EPOCH STEP UNIX_TIME PID KIND

with KIND ``start`` (STEP is the step it resumes after: 0 for a fresh start), ``step``
(STEP was just done) or ``done`` (the output is written; STEP is the total).

It checkpoints through the SDK being built for issue 7: ``outrider.checkpoint.save(obj)``
after every ``--every`` steps and ``outrider.checkpoint.load()`` at start. Until that
SDK exists the stage runs from scratch every time and says so on stderr; the suite then
reports the work redone, which is the point.

Usage (the argv of a pipeline task; the work dir holds a copy of this directory)::

    python steps.py --steps 30 --every 5 --step-seconds 0.1 [--payload 4096]
                    [--input NAME ...] [--output NAME] [--output-bytes 65536]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    from outrider import checkpoint  # type: ignore[attr-defined]
except ImportError:  # the SDK is not there yet (issue 7)
    checkpoint = None


def record(path: Path, task: str, epoch: int, step: int, kind: str) -> None:
    """Append one line in one write(2) with O_APPEND: lines of concurrent copies never interleave."""
    line = f"{task} {epoch} {step} {time.time():.3f} {os.getpid()} {kind}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def resume_point() -> int:
    """The last step the latest checkpoint covers (0: none, or no SDK)."""
    if checkpoint is None:
        print("steps.py: outrider.checkpoint is not available; starting from scratch", file=sys.stderr)
        return 0
    state: Any = checkpoint.load()
    if state is None:
        return 0
    if isinstance(state, (str, os.PathLike)):  # an SDK that hands back the saved file's path
        state = json.loads(Path(state).read_text())
    return int(state["step"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, required=True, help="checkpoint after every this many steps")
    ap.add_argument("--step-seconds", type=float, required=True)
    ap.add_argument("--payload", type=int, default=0, help="bytes of filler in each checkpoint")
    ap.add_argument("--input", action="append", default=[], help="declared input that must be present")
    ap.add_argument("--output", default="", help="declared output to write at the end")
    ap.add_argument("--output-bytes", type=int, default=0, help="filler bytes in the output")
    a = ap.parse_args(argv)

    task, epoch = os.environ["OUTRIDER_TASK"], int(os.environ["OUTRIDER_ATTEMPT"])
    rec = Path(os.environ["FAULTS_RECORDS"]) / f"{os.environ['OUTRIDER_RUN_ID']}__{task}.rec"
    inputs = Path(os.environ.get("OUTRIDER_INPUTS", "."))
    digest = hashlib.sha256()
    for name in a.input:
        digest.update((inputs / name).read_bytes())  # a missing input fails the stage, loudly

    start = resume_point()
    record(rec, task, epoch, start, "start")
    pad = os.urandom(a.payload // 2).hex() if a.payload else ""
    for step in range(start + 1, a.steps + 1):
        time.sleep(a.step_seconds)
        record(rec, task, epoch, step, "step")
        if checkpoint is not None and step % a.every == 0 and step < a.steps:
            checkpoint.save({"task": task, "epoch": epoch, "step": step, "pad": pad})

    if a.output:
        out = Path(os.environ["OUTRIDER_OUTPUTS"]) / a.output
        out.parent.mkdir(parents=True, exist_ok=True)
        head = json.dumps(
            {"task": task, "epoch": epoch, "steps": a.steps, "resumed_from": start, "inputs_sha256": digest.hexdigest()}
        )
        out.write_bytes(head.encode() + b"\n" + os.urandom(a.output_bytes))
    record(rec, task, epoch, a.steps, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
