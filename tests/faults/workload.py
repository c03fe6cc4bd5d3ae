"""The fault suite's workload and its judge.

Pipelines ``prep → train → eval`` of ``stages/steps.py``: ``prep`` writes a data artifact,
``train`` (the long one, which the faults hit) reads it, does numbered steps,
checkpoints every ``every`` steps and writes a model, ``eval`` reads the model. Every
stage keeps its own record of the steps it did (see ``stages/steps.py``).

``judge()`` then decides, from the scheduler's durable event log (its SQLite ``events``
table, read-only), the runs' final status and the stages' own records:

* tasks lost: a task without a committed result (must be 0);
* duplicate committed results: a task with more than one ``succeeded`` event (must be 0);
* stale commits accepted: a ``succeeded`` event for an attempt that was not the task's
  latest, or that had already been declared lost/released, or an output written by
  another attempt than the one committed (must be 0);
* work redone: for each start of an attempt, the steps that attempts before it had
  already done past the point it resumed from (must not exceed one checkpoint interval);
* stale copies: steps an attempt did after a newer attempt of its task had started; an
  old holder must not run beside a new attempt (beyond the agent watchdog's granularity).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
STAGES = HERE / "stages"


@dataclass(frozen=True)
class Shape:
    """How big the workload is. ``every`` steps make one checkpoint interval.

    ``propagation_s``: how long the agent may take to notice a complete checkpoint, upload
    it and have it accepted (it looks about once a second). A fault within that time of a
    save loses that save too, so a resume may redo one interval plus that much. With the
    minutes-long intervals of real training this is noise; at the suite's one-second
    intervals it is not, so it is allowed explicitly and printed beside the interval.
    """

    steps: int = 60
    every: int = 10
    step_s: float = 0.1
    payload: int = 0  # filler bytes in each checkpoint
    data_bytes: int = 2048  # prep's output, train's input
    model_bytes: int = 2048  # train's output, eval's input
    propagation_s: float = 1.5

    @property
    def interval_s(self) -> float:
        """One checkpoint interval, in seconds of work."""
        return self.every * self.step_s

    @property
    def redo_limit(self) -> int:
        """Steps a resumed attempt may redo: one interval, plus the steps done while a save propagates."""
        return self.every + math.ceil(self.propagation_s / self.step_s - 1e-9)

    @property
    def fault_step(self) -> int:
        """Where a scenario strikes: past three intervals (so a resume from scratch would redo more
        than ``redo_limit``), three steps after a save (mid-interval)."""
        return 3 * self.every + 3


def _steps(shape: Shape, steps: int, every: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "steps.py",
        "--steps",
        str(steps),
        "--every",
        str(every),
        "--step-seconds",
        str(shape.step_s),
        *extra,
    ]


def pipeline(
    name: str,
    records: Path,
    shape: Shape,
    *,
    train_on: Mapping[str, str] | None = None,
    others_on: Mapping[str, str] | None = None,
) -> Pipeline:
    """prep → train → eval; ``train_on``/``others_on``: labels the agents must have."""
    p = Pipeline(name, code=str(STAGES))
    env = {"FAULTS_RECORDS": str(records)}
    # A quarter of a CPU each: the stages mostly sleep, and a 2-core agent then runs 8 at once.
    other = {"requires": {"cpus": 0.25, **({"labels": dict(others_on)} if others_on else {})}}
    train = {"requires": {"cpus": 0.25, **({"labels": dict(train_on)} if train_on else {})}}
    p.task(
        "prep",
        run=_steps(shape, 2, 100, "--output", "data", "--output-bytes", str(shape.data_bytes)),
        outputs=["data"],
        env=env,
        **other,
    )
    p.task(
        "train",
        run=_steps(
            shape,
            shape.steps,
            shape.every,
            "--payload",
            str(shape.payload),
            "--input",
            "data",
            "--output",
            "model",
            "--output-bytes",
            str(shape.model_bytes),
        ),
        inputs={"data": "prep.data"},
        outputs=["model"],
        env=env,
        **train,
    )
    p.task(
        "eval",
        run=_steps(shape, 2, 100, "--input", "model", "--output", "score"),
        inputs={"model": "train.model"},
        outputs=["score"],
        env=env,
        **other,
    )
    return p


# --------------------------------------------------------------------------- the stages' records


@dataclass(frozen=True)
class Line:
    task: str
    epoch: int
    step: int
    t: float
    pid: int
    kind: str  # start | step | done


def read_records(records: Path, run_id: str, task: str) -> list[Line]:
    path = records / f"{run_id}__{task}.rec"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        f = raw.split()
        if len(f) == 6:
            out.append(Line(f[0], int(f[1]), int(f[2]), float(f[3]), int(f[4]), f[5]))
    return out


def max_step(records: Path, run_id: str, task: str, epoch: int | None = None) -> int:
    """The highest step recorded (by ``epoch`` only, if given); 0 when none."""
    steps = [
        ln.step
        for ln in read_records(records, run_id, task)
        if ln.kind == "step" and (epoch is None or ln.epoch == epoch)
    ]
    return max(steps, default=0)


@dataclass
class Segment:
    """One process of one attempt: from its ``start`` line to its last line."""

    epoch: int
    pid: int
    start_t: float
    resumed_from: int
    steps: list[Line] = field(default_factory=list)
    done: bool = False


def segments(lines: Sequence[Line]) -> list[Segment]:
    by_key: dict[tuple[int, int], Segment] = {}
    for ln in lines:
        key = (ln.epoch, ln.pid)
        if ln.kind == "start":
            by_key[key] = Segment(ln.epoch, ln.pid, ln.t, ln.step)
        elif key in by_key:
            if ln.kind == "step":
                by_key[key].steps.append(ln)
            elif ln.kind == "done":
                by_key[key].done = True
    return sorted(by_key.values(), key=lambda s: s.start_t)


# --------------------------------------------------------------------------- the verdict


@dataclass
class TaskReport:
    run_id: str
    task: str
    state: str
    committed: list[int]  # attempts with a 'succeeded' event
    attempts: list[int]  # attempts started (RUNNING events)
    stale_commits: int
    redone_steps: list[int]  # per resume (attempt start after the first)
    stale_steps: int  # steps done by an attempt after a newer one had started
    stale_last_t: float | None  # when the last such step was done
    stale_overlap_s: float  # the longest a stale copy kept working beside a newer attempt
    agents: list[str]
    lost_attempts: int = 0  # attempts whose lease ended without a report ('lost' events)


@dataclass
class Figures:
    """What a scenario prints and asserts."""

    scenario: str
    shape: Shape
    tasks: list[TaskReport]
    reassign_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: How long a stale copy may go on beside a newer attempt of its task: the agent's
    #: watchdog round (1 s at most) plus the kill grace the suite gives agents (1 s). The
    #: lease's promise is that an old holder never runs beside a new attempt; on two hosts
    #: with two clocks, "never" can only be measured to the watchdog's granularity.
    stale_grace_s: float = 2.0

    @property
    def tasks_lost(self) -> int:
        return sum(1 for t in self.tasks if not t.committed or t.state != "succeeded")

    @property
    def duplicate_commits(self) -> int:
        return sum(max(0, len(t.committed) - 1) for t in self.tasks)

    @property
    def stale_commits(self) -> int:
        return sum(t.stale_commits for t in self.tasks)

    @property
    def redone_s(self) -> list[float]:
        return [r * self.shape.step_s for t in self.tasks for r in t.redone_steps]

    @property
    def resumes(self) -> int:
        return sum(len(t.redone_steps) for t in self.tasks)

    def over_interval(self) -> list[str]:
        return [
            f"{t.run_id}/{t.task}: redid {r} steps (limit {self.shape.redo_limit})"
            for t in self.tasks
            for r in t.redone_steps
            if r > self.shape.redo_limit
        ]

    def summary(self) -> str:
        redone = self.redone_s
        stale = sum(t.stale_steps for t in self.tasks)
        rs = ", ".join(f"{x:.1f}" for x in self.reassign_s) or "-"
        lines = [
            f"[faults] {self.scenario}: {len(self.tasks)} tasks in {self.duration_s:.1f}s",
            f"  tasks lost: {self.tasks_lost} (must be 0)",
            f"  stale commits accepted: {self.stale_commits} (must be 0)",
            f"  duplicate committed results: {self.duplicate_commits} (must be 0)",
            f"  seconds to reassign: {rs}",
            f"  seconds of work redone: max {max(redone, default=0):.1f}, total {sum(redone):.1f} over "
            f"{self.resumes} resume(s) (limit per resume: one checkpoint interval, {self.shape.interval_s:.1f}s,"
            f" + {self.shape.propagation_s:g}s for a checkpoint to reach the scheduler)",
            f"  attempts lost (lease ended without a report): {sum(t.lost_attempts for t in self.tasks)}",
            f"  steps done by stale copies: {stale} (longest beside a newer attempt:"
            f" {max((t.stale_overlap_s for t in self.tasks), default=0.0):.1f}s, limit {self.stale_grace_s:g}s)",
        ]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def problems(self) -> list[str]:
        out = []
        for t in self.tasks:
            if not t.committed or t.state != "succeeded":
                out.append(f"{t.run_id}/{t.task} lost: state {t.state}, attempts {t.attempts}")
            if len(t.committed) > 1:
                out.append(f"{t.run_id}/{t.task} committed {len(t.committed)} times: attempts {t.committed}")
            if t.stale_commits:
                out.append(f"{t.run_id}/{t.task}: {t.stale_commits} stale commit(s) accepted")
            if t.stale_overlap_s > self.stale_grace_s:
                out.append(
                    f"{t.run_id}/{t.task}: a stale copy went on {t.stale_overlap_s:.1f}s beside a newer attempt"
                    f" ({t.stale_steps} steps)"
                )
        return out + self.over_interval()

    def check(self) -> None:
        """Assert the invariants: nothing lost, one commit per task, none stale, redone ≤ one interval
        (+ propagation), no stale copy working beside a newer attempt (beyond the watchdog's grace)."""
        problems = self.problems()
        assert not problems, "invariants broken:\n  " + "\n  ".join(problems) + "\n" + self.summary()


def _committed_output_epoch(client: Any, status: Any, task: str, output: str, dest: Path) -> int | None:
    """The epoch written inside a committed output (steps.py puts a JSON head line there)."""
    tasks = {t.name: t for t in status.tasks}
    outs = {o.name: o.digest for o in tasks[task].outputs} if task in tasks else {}
    if output not in outs:
        return None
    path = client.download(outs[output], dest)
    head = Path(path).read_bytes().split(b"\n", 1)[0]
    return int(json.loads(head)["epoch"])


def judge(
    scenario: str,
    shape: Shape,
    events: Iterable[Mapping[str, Any]],
    statuses: Mapping[str, Any],
    records: Path,
    *,
    client: Any = None,
    scratch: Path | None = None,
    cutoff: float | Mapping[tuple[str, str], float] | None = None,
) -> Figures:
    """Figures for runs ``statuses`` (run id → final RunStatus) from the event log and the records.

    ``cutoff`` (wall time, for all tasks or per ``(run_id, task)``): when the fault cut the
    attempt off from the scheduler. Steps an earlier attempt did after it count as a stale
    copy's work, not as work the resumed attempt redid: no checkpoint of them could reach
    the scheduler (a SIGKILLed agent's orphan, a frozen agent's stage, a partitioned host).

    With ``client`` and ``scratch``, each committed train output is downloaded and the epoch
    inside it compared with the committed attempt (a stale copy's output must never win).
    """
    by_task: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for e in events:
        if e["task"]:
            by_task[(e["run_id"], e["task"])].append(e)
    reports = []
    for run_id, status in statuses.items():
        for t in status.tasks:
            evs = by_task.get((run_id, t.name), [])
            committed = [e["attempt"] for e in evs if e["state"] == "succeeded"]
            started = [e["attempt"] for e in evs if e["state"] == "running"]
            stale = 0
            for i, e in enumerate(evs):
                if e["state"] != "succeeded":
                    continue
                newer = any(a > e["attempt"] for a in started)
                ended = any(x["state"] in ("lost", "released") and x["attempt"] == e["attempt"] for x in evs[:i])
                stale += int(newer or ended)
            if client is not None and scratch is not None and t.name == "train" and len(committed) == 1:
                epoch = _committed_output_epoch(client, status, "train", "model", scratch / f"{run_id}.model")
                if epoch is not None and epoch != committed[0]:
                    stale += 1
            segs = segments(read_records(records, run_id, t.name))
            redone = []
            stale_steps, stale_last, overlap = 0, None, 0.0
            cut = cutoff.get((run_id, t.name)) if isinstance(cutoff, Mapping) else cutoff
            for i, s in enumerate(segs):
                if i:
                    until = s.start_t if cut is None else min(s.start_t, cut)
                    before = [ln.step for o in segs[:i] for ln in o.steps if ln.t <= until]
                    redone.append(max(0, max(before, default=0) - s.resumed_from))
                newer_start = min((o.start_t for o in segs if o.epoch > s.epoch), default=None)
                if newer_start is not None:
                    late = [ln for ln in s.steps if ln.t > newer_start]
                    stale_steps += len(late)
                    if late:
                        stale_last = max(stale_last or 0.0, late[-1].t)
                        overlap = max(overlap, late[-1].t - newer_start)
            reports.append(
                TaskReport(
                    run_id=run_id,
                    task=t.name,
                    state=t.state,
                    committed=committed,
                    attempts=sorted(set(started)),
                    stale_commits=stale,
                    redone_steps=redone,
                    stale_steps=stale_steps,
                    stale_last_t=stale_last,
                    stale_overlap_s=overlap,
                    agents=[e["agent"] for e in evs if e["state"] == "running"],
                    lost_attempts=sum(1 for e in evs if e["state"] == "lost"),
                )
            )
    return Figures(scenario, shape, reports)


def reassign_seconds(
    events: Iterable[Mapping[str, Any]], run_id: str, task: str, after_attempt: int, t_fault: float
) -> float | None:
    """Seconds from ``t_fault`` (wall) to the start of the attempt that went on to commit the task.

    Not merely the next attempt: one granted to an agent that is still unreachable is lost
    in turn, and the task is no nearer done (the figure then shows that time too).
    """
    evs = [e for e in events if e["run_id"] == run_id and e["task"] == task]
    committed = [e["attempt"] for e in evs if e["state"] == "succeeded"]
    if not committed or committed[-1] <= after_attempt:
        return None
    for e in evs:
        if e["state"] == "running" and e["attempt"] == committed[-1]:
            return float(e["ts"]) - t_fault
    return None
