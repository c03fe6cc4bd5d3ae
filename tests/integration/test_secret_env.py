"""Secret environment values (issue 8) through a real scheduler and agent: the stage gets
the value; its output, the run's status and events, the audit log, a plan and the
daemons' own logs never show it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.timeout(120)

SECRET = "hunter2-b4c9e1f7-secret"


def _cli(cluster: LocalCluster, *args: str, name: str = "submitter", role: str = "submitter", err: bool = False) -> str:
    """``outrider ARGS`` as ``name`` (which must succeed): its stdout (and stderr with ``err``)."""
    res = run_cli(cluster.client_env(name, role), *args)
    assert res.returncode == 0, f"outrider {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    assert SECRET not in res.stderr
    return res.stdout + (res.stderr if err else "")


def test_secret_env_reaches_the_stage_and_nothing_else(two_agents: LocalCluster, tmp_path: Path) -> None:
    spec = tmp_path / "secret.yaml"
    spec.write_text(
        "name: secretive\n"
        "tasks:\n"
        "  use:\n"
        "    run: |\n"
        '      echo "the token is $TOKEN, twice: $TOKEN"\n'
        '      echo "to stderr: $TOKEN" >&2\n'
        '      printf %s "$TOKEN" | sha256sum | cut -c1-64 > $OUTRIDER_OUTPUTS/digest\n'
        "    outputs: [digest]\n"
        "    env: {PLAIN: shown}\n"
        f"    secret_env: {{TOKEN: {SECRET}}}\n"
    )
    plan = _cli(two_agents, "plan", str(spec), "--json")
    assert SECRET not in plan
    run_id = _cli(two_agents, "submit", str(spec)).split()[0]
    assert run_id.startswith("run-"), run_id
    events = _cli(two_agents, "watch", run_id, "--json")
    status = json.loads(_cli(two_agents, "status", run_id, "--json"))
    assert status["state"] == "succeeded", status
    digest = status["tasks"]["use"]["outputs"]["digest"]
    out = tmp_path / "digest"
    _cli(two_agents, "artifact", "get", digest, "-o", str(out))
    assert out.read_text().strip() == hashlib.sha256(SECRET.encode()).hexdigest()  # the stage saw it

    logs = _cli(two_agents, "logs", run_id, "use", err=True)  # (the stage's stderr goes to stderr)
    assert "the token is ***, twice: ***" in logs and "to stderr: ***" in logs
    audit = _cli(two_agents, "audit", "--json", name="root", role="admin")
    assert run_id in audit
    for shown in (events, json.dumps(status), logs, audit):
        assert SECRET not in shown
    two_agents.stop()  # every log line written
    daemon_logs = sorted((two_agents.root / "logs").glob("*.log"))
    assert len(daemon_logs) >= 3
    for path in daemon_logs:
        assert SECRET.encode() not in path.read_bytes(), path
