"""Tiny helper for the Outrider stage contract (standard library only).

A stage runs in a fresh work dir (its cwd) holding a copy of ./stages, with:
  OUTRIDER_INPUTS   dir: each declared input under its input name (file or dir)
  OUTRIDER_OUTPUTS  dir: write each declared output under its output name
  OUTRIDER_CHECKPOINT_DIR  dir: checkpoints (outrider.checkpoint; restored on resume)
  OUTRIDER_RUN_ID, OUTRIDER_TASK, OUTRIDER_ATTEMPT (1-based), TRACEPARENT
plus the task's `env:`. A missing declared output fails the task.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def _dir(var: str) -> Path:
    value = os.environ.get(var)
    if not value:
        fail(f"{var} is not set; this script is meant to run as an Outrider stage "
             f"(or under examples/digits/local_check.py)")
    return Path(value)


def input_path(name: str) -> Path:
    """Path of declared input `name`; exits with a clear message if it is absent."""
    path = _dir("OUTRIDER_INPUTS") / name
    if not path.exists():
        fail(f"declared input {name!r} not found at {path}")
    return path


def output_path(name: str) -> Path:
    """Path where declared output `name` must be written (parent dir ensured)."""
    out = _dir("OUTRIDER_OUTPUTS")
    out.mkdir(parents=True, exist_ok=True)
    return out / name


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        fail(f"env {name}={raw!r} is not an integer")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        fail(f"env {name}={raw!r} is not a number")


def context() -> dict:
    return {
        "run_id": os.environ.get("OUTRIDER_RUN_ID", ""),
        "task": os.environ.get("OUTRIDER_TASK", ""),
        "attempt": env_int("OUTRIDER_ATTEMPT", 1),
        "traceparent": os.environ.get("TRACEPARENT", ""),
    }


def log(msg: str) -> None:
    task = os.environ.get("OUTRIDER_TASK", "stage")
    print(f"[{task}] {msg}", flush=True)


def fail(msg: str, code: int = 1) -> NoReturn:
    task = os.environ.get("OUTRIDER_TASK", "stage")
    print(f"[{task}] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)
