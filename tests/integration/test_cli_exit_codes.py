"""The CLI's exit codes tell outcomes apart, against a real scheduler (real processes).

A submitter reading another's run is NOT_FOUND (5), a submitter draining an agent is
refused (4), a spec that fails validation is an invalid request (3), a scheduler that is
not there is unreachable (6); under ``--json`` each also prints one
``{"error": {"code", "message", "exit_code"}}`` line on stdout, and the human line on stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from outrider.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def _cli(
    cluster: LocalCluster, name: str, role: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    ca, cert, key = cluster.issue(role, name)
    env = {
        **cluster.env,
        "OUTRIDER_SCHEDULER": cluster.address,
        "OUTRIDER_CA": str(ca),
        "OUTRIDER_CERT": str(cert),
        "OUTRIDER_KEY": str(key),
    }
    return subprocess.run(
        [sys.executable, "-m", "outrider.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _expect(
    cluster: LocalCluster,
    name: str,
    role: str,
    args: list[str],
    code: str,
    exit_code: int,
    words: str,
    timeout: float = 60,
) -> None:
    """``outrider ARGS`` fails with ``exit_code``; with ``--json`` too, printing the error object."""
    plain = _cli(cluster, name, role, *args, timeout=timeout)
    assert plain.returncode == exit_code, (args, plain.returncode, plain.stdout, plain.stderr)
    assert plain.stdout == "", (args, plain.stdout)
    assert plain.stderr.startswith("outrider: error: ") and words in plain.stderr, (args, plain.stderr)

    js = _cli(cluster, name, role, *args, "--json", timeout=timeout)
    assert js.returncode == exit_code, (args, js.returncode, js.stdout, js.stderr)
    lines = js.stdout.splitlines()
    assert len(lines) == 1, (args, js.stdout)
    got: dict[str, Any] = json.loads(lines[0])
    assert set(got) == {"error"} and set(got["error"]) == {"code", "message", "exit_code"}, got
    assert got["error"]["code"] == code and got["error"]["exit_code"] == exit_code, got
    assert words in got["error"]["message"], got
    assert js.stderr.startswith("outrider: error: ") and words in js.stderr, js.stderr  # a person still reads it


def _spec(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_exit_codes_and_json_errors_tell_outcomes_apart(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    good = _spec(tmp_path, "good.yaml", "name: mine\ntasks:\n  a:\n    run: 'true'\n")
    submitted = _cli(cluster, "alice", "submitter", "submit", good, "--json")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    assert _cli(cluster, "alice", "submitter", "status", run_id).returncode == 0

    # Another submitter's run is not found, in the words of a run that does not exist.
    _expect(cluster, "bob", "submitter", ["status", run_id], "NOT_FOUND", 5, run_id)
    _expect(cluster, "bob", "submitter", ["cancel", run_id], "NOT_FOUND", 5, run_id)
    _expect(cluster, "alice", "submitter", ["status", "run-nope"], "NOT_FOUND", 5, "run-nope")
    # Draining is for admins.
    _expect(cluster, "bob", "submitter", ["drain", "w1"], "PERMISSION_DENIED", 4, "may not call")
    _expect(cluster, "bob", "submitter", ["audit", "verify"], "PERMISSION_DENIED", 4, "may not call")
    # The verbs of revocation and enrolment go through the same table.
    _expect(cluster, "bob", "submitter", ["revoke", "agent", "w1"], "PERMISSION_DENIED", 4, "may not call")
    _expect(cluster, "bob", "submitter", ["token", "list"], "PERMISSION_DENIED", 4, "may not call")
    _expect(cluster, "root", "admin", ["token", "revoke", "nope"], "NOT_FOUND", 5, "nope")
    # An invalid spec: checked before anything is sent; a missing spec file is not found.
    bad = _spec(tmp_path, "bad.yaml", "name: bad\ntasks:\n  a:\n    run: 'true'\n    after: [ghost]\n")
    _expect(cluster, "alice", "submitter", ["submit", bad], "INVALID_ARGUMENT", 3, "ghost")
    _expect(cluster, "alice", "submitter", ["plan", bad], "INVALID_ARGUMENT", 3, "ghost")
    missing = str(tmp_path / "nowhere.yaml")
    _expect(cluster, "alice", "submitter", ["submit", missing], "NOT_FOUND", 5, "nowhere.yaml")
    # A request that does not fit the run's state (no agent: it is still running).
    _expect(cluster, "alice", "submitter", ["retry", run_id], "FAILED_PRECONDITION", 3, "still running")
    # A config problem stays 2 (no scheduler can be named), as do usage errors.
    env_less = subprocess.run(
        [sys.executable, "-m", "outrider.cli", "runs", "--json", "--config", str(tmp_path / "none.toml")],
        env={**cluster.env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert env_less.returncode == 2, env_less
    assert json.loads(env_less.stdout)["error"]["code"] == "CONFIG_ERROR", env_less.stdout
    usage = _cli(cluster, "alice", "submitter", "status", "--json")
    assert usage.returncode == 2 and "usage:" in usage.stderr, usage
    assert json.loads(usage.stdout) == {
        "error": {
            "code": "USAGE",
            "exit_code": 2,
            "message": "outrider status: the following arguments are required: run",
        }
    }, usage.stdout

    # The scheduler stopped: its address is unreachable, and the CLI says so quickly.
    assert cluster.scheduler is not None
    cluster.scheduler.stop(timeout=15)
    started = time.monotonic()
    _expect(cluster, "alice", "submitter", ["status", run_id], "UNAVAILABLE", 6, "UNAVAILABLE", timeout=30)
    _expect(cluster, "alice", "submitter", ["runs"], "UNAVAILABLE", 6, "UNAVAILABLE", timeout=30)
    assert time.monotonic() - started < 60
