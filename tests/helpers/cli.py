"""Running the ``outrider`` CLI as a user would: a real process, its own environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``outrider ARGS`` with ``env`` (``LocalCluster.client_env``), stdin closed; never raises on
    a non-zero exit (the caller looks at it)."""
    return subprocess.run(
        [sys.executable, "-m", "outrider.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
