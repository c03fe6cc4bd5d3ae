"""Keeping an idle agent small: shedding start-up-only modules, heap tuning never fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shed_forgets_a_package_and_its_submodules() -> None:
    code = (
        "import sys, json, json.decoder, agent.memory as m; m.shed('json'); "
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'json'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_heap_tuning_is_safe_with_and_without_ctypes() -> None:
    # Without ctypes loaded it does nothing (and does not load it); with it, it calls glibc.
    code = (
        "import sys, agent.memory as m; m.tune_malloc(); m.trim_heap(); "
        "print('ctypes' in sys.modules); import ctypes; m.tune_malloc(); m.trim_heap(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "ok"]
