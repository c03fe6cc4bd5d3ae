#!/usr/bin/env python3
"""Run the digits pipeline locally, without a scheduler or agents, emulating the stage contract.

For each task, in dependency order, this:
  * makes a fresh work dir holding a copy of the `code:` directory (./stages),
  * fills an inputs dir with copies of the upstream outputs, each under its input name,
  * sets OUTRIDER_INPUTS / OUTRIDER_OUTPUTS / OUTRIDER_CHECKPOINT_DIR (one per task, kept
    across its attempts, so a retry resumes) / OUTRIDER_METRICS_FILE / OUTRIDER_RUN_ID /
    OUTRIDER_TASK / OUTRIDER_ATTEMPT / TRACEPARENT plus the task's `env:`,
  * runs `run:` (a string via /bin/sh -c, a list exec'd directly) with the task's timeout,
  * retries up to `retries:` times, and fails the task if a declared output is missing.

The spec is parsed with Outrider's own parser (outrider.pipeline); it also checks the
spec against the demo's three agents (labels, <= 2 cores, no GPUs).

    .venv/bin/python examples/digits/local_check.py                 # whole chain
    .venv/bin/python examples/digits/local_check.py --keep          # keep the temp dir
    .venv/bin/python examples/digits/local_check.py --set ingest.DIGITS_CORRUPT=nan    # validate must fail
    .venv/bin/python examples/digits/local_check.py --set train.TRAIN_FAIL_ATTEMPTS=1  # one retry
    .venv/bin/python examples/digits/local_check.py --set train.TRAIN_FAIL_AFTER_EPOCH=20  # resumes at 21

`python3` in the run commands resolves to the interpreter running this script
(its bin dir is put first on PATH), so run it with a Python that has numpy and
scikit-learn.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


HERE = Path(__file__).resolve().parent
DEMO_AGENTS = {  # what `make demo` starts: 2 cores each, no real GPUs
    "gpu": {"tier": "gpu", "accelerator": "gpu", "site": "lab"},
    "hpc": {"tier": "hpc", "site": "campus"},
    "edge": {"tier": "edge", "site": "plant-7"},
}
DEMO_CPUS = 2


class SpecError(Exception):
    pass


def read_metrics(path: Path):  # -> outrider.metrics.FileSummary (imported when run)
    """The stage's metrics file as an agent reads it (outrider.metrics: bounded, last value per name)."""
    from outrider.metrics import read_file

    return read_file(path)


def load_spec(path: Path) -> dict:
    """Parse and validate with Outrider's own spec parser (outrider.pipeline), then
    flatten each task into the plain dict this runner works with."""
    from outrider.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(path)
    except Exception as exc:  # SpecError lists every problem with FILE:LINE: field
        raise SpecError(str(exc)) from None
    tasks = {}
    for name in pipeline.tasks:
        t = pipeline.tasks[name]
        tasks[name] = {
            "run": t.argv[0] if t.shell else list(t.argv),
            "inputs": dict(t.inputs),
            "outputs": list(t.outputs),
            "after": list(t.after),
            "env": dict(t.env),
            "requires": {"cpus": t.cpus, "gpus": t.gpus, "labels": dict(t.labels)},
            "_timeout": t.timeout_s or 3600.0,
            "_retries": t.max_attempts - 1,
        }
    return {"name": pipeline.name, "code": str(pipeline.code_dir or path.parent), "tasks": tasks,
            "_order": pipeline.topological_order()}


def check_placement(tasks: dict) -> None:
    for name, t in tasks.items():
        req = t["requires"]
        labels = {str(k): str(v) for k, v in (req.get("labels") or {}).items()}
        if req.get("gpus"):
            raise SpecError(f"tasks.{name} requires gpus, but the demo agents have none")
        if float(req.get("cpus", 1)) > DEMO_CPUS:
            raise SpecError(f"tasks.{name} requires {req['cpus']} cpus > {DEMO_CPUS} (demo agents)")
        fits = [a for a, al in DEMO_AGENTS.items() if labels.items() <= al.items()]
        if not fits:
            raise SpecError(f"tasks.{name}: labels {labels} match none of the demo agents")
        t["_fits"] = fits


def copy_any(src: Path, dst: Path, read_only: bool = False) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
        files = [p for p in dst.rglob("*") if p.is_file()]
    else:
        shutil.copyfile(src, dst)
        files = [dst]
    if read_only:
        for p in files:
            p.chmod(0o444)


def size_of(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(q.stat().st_size for q in p.rglob("*") if q.is_file())


def run_task(name: str, t: dict, *, root: Path, code_dir: Path, artifacts: dict,
             run_id: str, trace_id: str, overrides: dict) -> bool:
    for attempt in range(1, t["_retries"] + 2):
        base = root / name / f"attempt-{attempt}"
        work, inputs, outputs = base / "work", base / "inputs", base / "outputs"
        shutil.copytree(code_dir, work, ignore=shutil.ignore_patterns("__pycache__"))
        inputs.mkdir()
        outputs.mkdir()
        for in_name, ref in t["inputs"].items():
            copy_any(artifacts[ref], inputs / in_name, read_only=True)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(t["env"])
        env.update(overrides.get(name, {}))
        env.update({
            # One checkpoint dir per task, shared by its attempts: a retry finds the
            # previous attempt's checkpoint, as an agent would restore it.
            "OUTRIDER_CHECKPOINT_DIR": str(root / name / "checkpoint"),
            "OUTRIDER_INPUTS": str(inputs), "OUTRIDER_OUTPUTS": str(outputs),
            "OUTRIDER_METRICS_FILE": str(base / "metrics.jsonl"),  # read as an agent reads it, below
            "OUTRIDER_RUN_ID": run_id, "OUTRIDER_TASK": name, "OUTRIDER_ATTEMPT": str(attempt),
            "TRACEPARENT": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        })
        argv = ["/bin/sh", "-c", t["run"]] if isinstance(t["run"], str) else list(t["run"])
        print(f"── {name} (attempt {attempt}/{t['_retries'] + 1}, fits demo agent(s): "
              f"{', '.join(t['_fits'])}) $ {t['run'] if isinstance(t['run'], str) else json.dumps(t['run'])}",
              flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=t["_timeout"])
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            rc = None
        for line in out.splitlines():
            print(f"   │ {line}")
        dt = time.monotonic() - t0
        recorded = read_metrics(base / "metrics.jsonl")  # what an agent would report with the attempt
        if recorded.points or recorded.skipped:
            print("   metrics: " + ", ".join(
                f"{p.name}={p.value:.4g}" + (f"@{p.step}" if p.step is not None else "") for p in recorded.points)
                + (f"; {recorded.skipped} line(s) skipped: {recorded.reason}" if recorded.skipped else ""))
        missing = [o for o in t["outputs"] if not (outputs / o).exists()]
        if rc == 0 and not missing:
            for o in t["outputs"]:
                dst = root / "_artifacts" / name / o
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(outputs / o), dst)
                artifacts[f"{name}.{o}"] = dst
            outs = ", ".join(f"{o}{'/' if artifacts[f'{name}.{o}'].is_dir() else ''}"
                             f" ({size_of(artifacts[f'{name}.{o}'])} B)" for o in t["outputs"])
            print(f"   ✔ {name} ok in {dt:.1f}s → {outs}", flush=True)
            return True
        why = (f"timed out after {t['_timeout']:.0f}s" if rc is None
               else f"exit code {rc}" if rc != 0 else f"missing declared output(s) {missing}")
        print(f"   ✘ {name} attempt {attempt} failed: {why}", flush=True)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and print its path")
    ap.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                    help="override a task env var (repeatable)")
    ap.add_argument("--min-accuracy", type=float, default=0.9,
                    help="fail unless metrics accuracy exceeds this (default 0.9)")
    args = ap.parse_args()

    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        m = re.fullmatch(r"([\w-]+)\.(\w+)=(.*)", item)
        if not m:
            ap.error(f"--set {item!r}: expected TASK.KEY=VALUE")
        overrides.setdefault(m[1], {})[m[2]] = m[3]

    spec_path = Path(args.spec).resolve()
    try:
        spec = load_spec(spec_path)
        tasks = spec["tasks"]
        unknown = set(overrides) - set(tasks)
        if unknown:
            raise SpecError(f"--set names unknown task(s) {sorted(unknown)}")
        order = spec["_order"]
        check_placement(tasks)
    except SpecError as exc:
        print(f"spec error in {spec_path}: {exc}", file=sys.stderr)
        return 2
    code_dir = (spec_path.parent / spec.get("code", ".")).resolve()
    if not code_dir.is_dir():
        print(f"spec error: code dir {code_dir} does not exist", file=sys.stderr)
        return 2
    try:
        import numpy, sklearn  # noqa: F401,E401  (stages need them)
    except ImportError as exc:
        print(f"{sys.executable} lacks {exc.name}; run with the project venv "
              f"(.venv/bin/python)", file=sys.stderr)
        return 2

    run_id = f"local-{uuid.uuid4().hex[:12]}"
    trace_id = secrets.token_hex(16)  # one trace per run, one span id per attempt
    root = Path(tempfile.mkdtemp(prefix=f"outrider-{spec['name']}-"))
    print(f"pipeline {spec['name']!r}: {' → '.join(order)}  run={run_id}  dir={root}", flush=True)
    artifacts: dict[str, Path] = {}
    t_start = time.monotonic()
    ok = True
    try:
        for name in order:
            if not run_task(name, tasks[name], root=root, code_dir=code_dir, artifacts=artifacts,
                            run_id=run_id, trace_id=trace_id, overrides=overrides):
                rest = order[order.index(name) + 1:]
                print(f"pipeline FAILED at {name}; not run: {', '.join(rest) or '-'}")
                ok = False
                break
        if ok and "evaluate.metrics" in artifacts:
            acc = json.loads(artifacts["evaluate.metrics"].read_text())["accuracy"]
            print(f"pipeline OK in {time.monotonic() - t_start:.1f}s: accuracy={acc:.3f}", end="")
            if "package.bundle" in artifacts:
                print(f", bundle = {sorted(p.name for p in artifacts['package.bundle'].iterdir())}", end="")
            print()
            if acc <= args.min_accuracy:
                print(f"accuracy {acc:.3f} is not above {args.min_accuracy}")
                ok = False
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            for p in root.rglob("*"):  # inputs were made read-only
                if p.is_file():
                    p.chmod(0o644)
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
