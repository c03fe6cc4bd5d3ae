"""A stage that works in steps, checkpoints after each (outrider.checkpoint), resumes from its
checkpoint, and keeps its own record of the steps it did, outside the cluster.

The record (``MARKS/steps``: one ``ATTEMPT STEP`` line per step done) shows what ran and
what was done twice; ``MARKS/pids`` has the pid of every process that ran it. On SIGTERM
it finishes the step it is in, checkpoints, and exits 143 (as a well-behaved stage asked to
stop does). It runs under the test's own interpreter, where ``outrider`` is importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from outrider.pipeline import Pipeline

PROGRAM = """
import os, signal, sys, time
from outrider import checkpoint
marks = os.environ["MARKS"]
attempt = int(os.environ["OUTRIDER_ATTEMPT"])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with open(os.path.join(marks, "pids"), "a") as f:
    f.write(f"{os.getpid()}\\n")
state = checkpoint.load() or {"step": 0}
quiet = os.environ.get("QUIET")
if not quiet:
    print(f"attempt {attempt} starts after step {state['step']}", flush=True)
fail_at = int(os.environ.get("FAIL_AT") or 0)
for step in range(state["step"] + 1, int(os.environ["STEPS"]) + 1):
    time.sleep(float(os.environ["STEP_S"]))
    with open(os.path.join(marks, "steps"), "a") as f:
        f.write(f"{attempt} {step}\\n")
    checkpoint.save({"step": step})
    if not quiet:
        print(f"step {step} done", flush=True)
    if stop:
        sys.exit(143)
    if attempt == 1 and step == fail_at:
        sys.exit(3)
with open(os.path.join(os.environ["OUTRIDER_OUTPUTS"], "out"), "w") as f:
    f.write("done\\n")
"""


def steps_pipeline(
    marks: Path,
    steps: int,
    step_s: float,
    *,
    outputs: tuple[str, ...] = ("out",),
    quiet: bool = False,
    fail_at: int = 0,
    retries: int = 0,
    labels: dict[str, str] | None = None,
) -> Pipeline:
    """One task, ``work``, of ``steps`` steps of ``step_s`` seconds. ``fail_at``: attempt 1
    exits 3 right after checkpointing that step; ``quiet``: it writes nothing to its output."""
    env = {"MARKS": str(marks), "STEPS": str(steps), "STEP_S": str(step_s), "PYTHONUNBUFFERED": "1"}
    if quiet:
        env["QUIET"] = "1"  # writes nothing to its output: no broken pipe would ever stop it
    if fail_at:
        env["FAIL_AT"] = str(fail_at)
    p = Pipeline("steps")
    kw: dict[str, object] = {}
    if retries:
        kw["retries"] = {"max": retries, "backoff": "100ms"}
    if labels:
        kw["requires"] = {"labels": labels}
    p.task("work", run=[sys.executable, "-c", PROGRAM], outputs=list(outputs), env=env, **kw)  # type: ignore[arg-type]
    return p


def recorded(marks: Path) -> list[tuple[int, int]]:
    """(attempt, step) of every step done, in order."""
    try:
        lines = (marks / "steps").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(a), int(s)) for a, s in (line.split() for line in lines)]


def pids(marks: Path) -> list[int]:
    try:
        return [int(x) for x in (marks / "pids").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def redone(marks: Path) -> int:
    """How many steps were done more than once."""
    steps = [s for _, s in recorded(marks)]
    return len(steps) - len(set(steps))
