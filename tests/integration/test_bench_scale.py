"""bench/scale.py runs end to end: its smallest run prints one JSON object of the promised shape.

Only the shape is checked (the figures are the benchmark's business, never a test's): every
row carries the keys the issue names, one row per agent count of ``--quick``, and the run saw
no errors (every agent registered and kept its stream, every submitted task was assigned).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"backend", "agents", "dispatch_p50_ms", "dispatch_p99_ms", "rss_per_agent_kb", "errors"}


def test_scale_bench_quick_json_shape(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--json", "--backend", "sqlite",
         "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    rows = result["rows"]
    assert [(r["backend"], r["agents"]) for r in rows] == [("sqlite", 20), ("sqlite", 50)]
    for row in rows:
        assert row.keys() >= KEYS, sorted(KEYS - row.keys())
        assert row["errors"] == 0, row
        assert row["streams"] == row["agents"], row
        assert row["dispatched"] > 0, row
        for key in ("dispatch_p50_ms", "dispatch_p99_ms", "rss_per_agent_kb", "heartbeats_per_s"):
            assert isinstance(row[key], (int, float)), (key, row[key])
    assert result["skipped"] == []
    assert list(tmp_path.iterdir()) == [], "the bench left its temp dir behind"


def test_scale_bench_refuses_a_bad_agent_list() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--agents", "100,lots"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode != 0
    assert "--agents '100,lots'" in out.stderr
