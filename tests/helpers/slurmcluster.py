"""A real single-node Slurm for the tests: Debian's ``slurm-wlm`` and ``munge`` on loopback.

:class:`SlurmCluster` writes a munge key, ``slurm.conf`` (one node, ``outrider0``, with this
machine's CPUs and a ``RealMemory`` below its own, one partition ``debug``, no accounting
daemon), starts ``munged``, ``slurmctld`` and ``slurmd`` as root with every pid, state,
spool and log file in its temp dir and on free ports, waits (with a deadline) for ``sinfo``
to show the node idle, and stops and removes all of it even when a test fails.

Without ``slurmdbd`` (``AccountingStorageType=accounting_storage/none``), ``sacct`` does not
work; the agent reads ends with ``scontrol show job`` (agent.slurm), which this covers.

:func:`slurm_available` says why not when the packages are missing and cannot be installed
(the Makefile's ``sysdeps`` installs them), or the tests do not run as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from outrider.localcluster import wait_for

#: What the node offers to jobs (below the machine's own, so the tests can tell them apart).
NODE_MEMORY_MB = 1000
PARTITION = "debug"
NODE = "outrider0"
_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def slurm_available() -> str:
    """Empty if a Slurm can be started here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (slurmd starts jobs as their users)"
    missing = [b for b in _BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing and shutil.which("apt-get") is not None:
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
            shell=True,
            capture_output=True,
            timeout=600,
            check=False,
        )
        missing = [b for b in _BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"slurm-wlm and munge are not installed and could not be installed (missing {', '.join(missing)})"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """munged + slurmctld + slurmd in ``root``; :meth:`start`, then :meth:`stop` (idempotent)."""

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = root.resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.munge = self.root / "munge"
        self.socket = self.munge / "munge.socket"
        #: The environment Slurm's commands need (the agent's too).
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids = [self.root / "slurmd.pid", self.root / "slurmctld.pid", self.munge / "munged.pid"]

    def start(self, timeout: float = 60.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        for d in (self.root, self.munge, self.root / "state", self.root / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        self.munge.chmod(0o700)
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(
            f"""ClusterName=outrider
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=2
MinJobAge=300
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={NODE_MEMORY_MB} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        )
        m = self.munge
        self._run(
            _bin("munged"),
            f"--socket={self.socket}",
            f"--key-file={m / 'munge.key'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--log-file={m / 'munged.log'}",
            f"--seed-file={m / 'munge.seed'}",
            "--force",
        )
        wait_for(self.socket.exists, 10, "munged's socket")
        self._run(_bin("slurmctld"), "-f", str(self.conf))
        self._run(_bin("slurmd"), "-f", str(self.conf), "-N", NODE)
        self.wait_idle(timeout)

    def _run(self, *argv: str) -> None:
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}\n{self.logs()}")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until ``sinfo`` shows the node idle (no jobs, up)."""
        wait_for(self._idle, timeout, f"sinfo to show {NODE} idle", interval=0.2)

    def wait_up(self, timeout: float = 60.0) -> None:
        """Until ``sinfo`` shows the node up (idle, or running jobs)."""

        def up() -> bool:
            state = self.command("sinfo", "--noheader", "--Node", "--format=%t", check=False).strip()
            return state in ("idle", "mix", "alloc", "comp")

        wait_for(up, timeout, f"sinfo to show {NODE} up", interval=0.2)

    def _idle(self) -> bool:
        return self.command("sinfo", "--noheader", "--Node", "--format=%t", check=False).strip() == "idle"

    def command(self, *argv: str, check: bool = True) -> str:
        """A Slurm command against this cluster; its stdout."""
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def jobs(self) -> dict[str, str]:
        """Job name → state of every job squeue lists (any state)."""
        out = self.command("squeue", "--noheader", "--states=all", "--format=%j|%T")
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            p = self.root / name
            if p.exists():
                parts.append(f"--- {name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Every daemon stopped (SIGTERM, SIGKILL after 10 s), its files removed."""
        for pidfile in self._pids:
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
