"""Fault 4 of issue 7 (the scheduler side): one live scheduler per state dir, one per port.

Two schedulers once opened the same state dir and both served; a second one bound a
port already in use (gRPC sets SO_REUSEPORT by default) and took half the calls.
Now the second start fails at once with a clear error: naming the pid that holds the
state dir, or saying that the address is in use.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outrider.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(60)


def _second(cluster: LocalCluster, listen: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "scheduler.main", "--listen", listen, "--state-dir", str(state_dir),
            "--pki-dir", str(cluster.pki), "--ready-file", str(state_dir.parent / "second.ready")]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=cluster.env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the second scheduler kept running: {exc.stderr!r}") from None


def test_a_second_scheduler_on_the_same_state_dir_fails_naming_the_holder(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    assert cluster.scheduler is not None
    got = _second(cluster, "127.0.0.1:0", cluster.root / "scheduler")
    assert got.returncode == 2, got
    assert f"pid {cluster.scheduler.pid}" in got.stderr, got.stderr
    assert "in use" in got.stderr
    assert not (cluster.root / "second.ready").exists()
    assert cluster.scheduler.alive()


def test_a_second_scheduler_on_a_port_in_use_fails_clearly(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_scheduler()
    port = cluster.address.rpartition(":")[2]
    got = _second(cluster, f"127.0.0.1:{port}", tmp_path / "other-state")
    assert got.returncode == 2, got
    assert f"127.0.0.1:{port}" in got.stderr and "in use" in got.stderr, got.stderr
    assert cluster.scheduler is not None and cluster.scheduler.alive()
    # The first one still answers every call (none go to a second listener).
    with cluster.client() as client:
        for _ in range(20):
            client.list_runs()


def test_the_state_dir_is_free_again_once_the_scheduler_stopped(cluster: LocalCluster) -> None:
    cluster.start_scheduler()
    assert cluster.scheduler is not None
    cluster.scheduler.kill()  # SIGKILL: the kernel drops the lock with the process
    cluster.start_scheduler()
    assert cluster.scheduler.alive()


def test_the_dashboard_is_on_loopback_by_default_and_a_port_in_use_there_is_only_a_warning(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Without http_listen the scheduler serves /metrics and the dashboard on 127.0.0.1:7480; when
    that port is taken (another scheduler on the host) it serves on without them, saying so."""
    import socket
    import urllib.request

    from scheduler.server import DEFAULT_HTTP_LISTEN
    from outrider.localcluster import wait_for as wait_until

    host, _, port = DEFAULT_HTTP_LISTEN.rpartition(":")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind((host, int(port)))
    except OSError:
        pytest.skip(f"{DEFAULT_HTTP_LISTEN} is in use by another program on this machine")
    holder.listen()
    cluster.init_pki()
    argv = [sys.executable, "-m", "scheduler.main", "--listen", "127.0.0.1:0", "--pki-dir", str(cluster.pki)]
    ready = tmp_path / "ready"
    log = tmp_path / "taken.log"
    try:
        with open(log, "w") as out:
            taken = subprocess.Popen([*argv, "--state-dir", str(tmp_path / "a"), "--ready-file", str(ready)],
                                     stdout=out, stderr=subprocess.STDOUT, env=cluster.env)
        try:
            wait_until(ready.exists, 30, "the scheduler to serve beside a taken dashboard port")
            assert taken.poll() is None
            text = log.read_text()
            assert "warning" in text.lower() and DEFAULT_HTTP_LISTEN in text and "no dashboard or /metrics" in text, text
        finally:
            taken.terminate()
            taken.wait(20)
    finally:
        holder.close()
    ready.unlink()
    with open(tmp_path / "free.log", "w") as out:
        free = subprocess.Popen([*argv, "--state-dir", str(tmp_path / "b"), "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT, env=cluster.env)
    try:
        wait_until(ready.exists, 30, "the scheduler to serve")
        with urllib.request.urlopen(f"http://{DEFAULT_HTTP_LISTEN}/metrics", timeout=10) as answer:
            assert answer.status == 200 and b"outrider_" in answer.read()
    finally:
        free.terminate()
        free.wait(20)
