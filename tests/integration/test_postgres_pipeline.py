"""End to end on PostgreSQL: a real scheduler with ``--database postgresql://…`` (TLS,
``sslmode=verify-full``, the password from a file), a real agent, a two-stage pipeline with an
artifact between the stages; then the scheduler is killed and started again, this time with
the password from ``PGPASSWORD``, and the run is still there (it lives in PostgreSQL, not in
the state dir). Also: a database that cannot be reached stops the start with exit 2 and a
message naming host, port and database, never the password.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline
from tests.helpers.backends import PostgresBackend
from tests.helpers.pgserver import free_port

pytestmark = pytest.mark.timeout(120)


def test_a_pipeline_runs_and_survives_a_restart_on_postgresql(
    cluster: LocalCluster, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    server = pg_backend.server
    uri = (
        f"postgresql://outrider@localhost:{server.port}/{pg_backend.dbname}"
        f"?sslmode=verify-full&sslrootcert={server.ca}"
    )
    pwfile = tmp_path / "pg-password"
    pwfile.write_text(server.password + "\n")
    pwfile.chmod(0o600)
    cluster.start_scheduler(["--database", uri, "--database-password-file", str(pwfile)])
    cluster.add_agent("a", slots=2)
    cluster.wait_agents(["a"])
    p = Pipeline("pg")
    p.task("make", run="echo 41 > $OUTRIDER_OUTPUTS/n", outputs=["n"])
    p.task("use", run='echo $(( $(cat $OUTRIDER_INPUTS/n) + 1 ))', inputs={"n": "make.n"})
    with cluster.client() as client:
        run_id = client.submit(p).run_id
        status = client.wait(run_id, timeout=60)
        assert status.state == "succeeded", status
        log = b"".join(line.data for line in client.logs(run_id, "use")).decode()
        assert log.strip() == "42"
    # The state is in PostgreSQL: the runs, tasks and audit rows are there, and no SQLite file.
    assert pg_backend.read("SELECT state FROM runs WHERE run_id=?", (run_id,)) == [("succeeded",)]
    assert pg_backend.read("SELECT count(*) FROM tasks WHERE run_id=? AND state='succeeded'", (run_id,)) == [(2,)]
    assert pg_backend.read("SELECT count(*) FROM audit WHERE action='submit'")[0][0] >= 1
    assert not (cluster.root / "scheduler" / "outrider.db").exists()

    assert cluster.scheduler is not None
    cluster.scheduler.kill()  # SIGKILL: no clean shutdown
    cluster.env["PGPASSWORD"] = server.password
    cluster.start_scheduler(["--database", uri])
    with cluster.client() as client:
        status = client.get_run(run_id)
        assert status.state == "succeeded"
        assert {t.name: t.state for t in status.tasks} == {"make": "succeeded", "use": "succeeded"}


def test_an_unreachable_database_stops_the_start_naming_it(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.init_pki()
    port = free_port()  # nothing listens there
    argv = [sys.executable, "-m", "scheduler.main", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s"),
            "--pki-dir", str(cluster.pki), "--database", f"postgresql://sched@127.0.0.1:{port}/outrider"]
    env = {**os.environ, "PGPASSWORD": "hunter2-secret", "PGCONNECT_TIMEOUT": "5"}
    got = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert got.returncode == 2, got
    assert f"host 127.0.0.1 port {port} database outrider" in got.stderr, got.stderr
    assert "hunter2-secret" not in got.stderr + got.stdout


def test_a_uri_with_a_password_is_refused_before_anything_starts(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "scheduler.main", "--state-dir", str(tmp_path / "s"),
            "--database", "postgresql://sched:hunter2-secret@127.0.0.1/outrider"]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert got.returncode == 2, got
    assert "password file" in got.stderr and "hunter2-secret" not in got.stderr, got.stderr
    assert not (tmp_path / "s").exists()
