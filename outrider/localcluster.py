"""A whole Outrider deployment on one machine: CA, scheduler, agents, as real processes.

Used by ``make demo``, the integration tests and the benchmarks; also handy for
trying pipelines on a laptop::

    with LocalCluster("/tmp/outrider-play") as c:
        c.start_scheduler()
        c.add_agent("gpu-1", labels={"tier": "gpu"})
        c.wait_agents(["gpu-1"])
        with c.client() as client:
            ...

Everything runs on loopback with real mTLS and real SQLite. ``stop()`` (also on
``with`` exit) ends every process it started, and any stage process left in
its work dirs, even after a test failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from outrider.errors import OutriderError
from outrider.tls import pki_paths


class ClusterError(OutriderError):
    """Raised when a local daemon does not start or exits unexpectedly."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """One process we started, with its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; returns its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class LocalCluster:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        trust_domain: str = "outrider.local",
        lease_ttl: str = "15s",
        heartbeat_interval: str = "3s",
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        log_format: str = "text",
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = self.root / "pki"
        self.trust_domain = trust_domain
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_level = log_level
        #: The daemons' --log-format: readable lines in its log files by default (people and tests
        #: read them); "json" for structured lines (outrider.logfmt).
        self.log_format = log_format
        self.scheduler: Daemon | None = None
        self.agents: dict[str, Daemon] = {}
        self.address = ""
        self._issued: set[str] = set()

    # -- PKI --

    def init_pki(self) -> None:
        from outrider import pki

        if not (self.pki / "ca.crt").exists():
            pki.init_ca(self.pki, self.trust_domain)

    def issue(self, role: str, name: str, zones: Iterable[str] | None = None) -> tuple[Path, Path, Path]:
        """Certificate files (ca, cert, key) for an identity, issued once (an agent's with the
        zones extension when ``zones`` is given: its zones are then the certificate's)."""
        from outrider import pki

        self.init_pki()
        paths = pki_paths(self.pki, name)
        if name not in self._issued and not paths[1].exists():
            pki.issue(self.pki, role, name, zones=zones)
        self._issued.add(name)
        return paths

    # -- daemons --

    def start_scheduler(self, extra_args: Iterable[str] = (), timeout: float = 30.0) -> str:
        self.init_pki()
        ready = self.root / "scheduler.ready"
        ready.unlink(missing_ok=True)
        listen = f"127.0.0.1:{self.address.rpartition(':')[2]}" if self.address else "127.0.0.1:0"
        argv = [
            self.python,
            "-m",
            "scheduler.main",
            "--listen",
            listen,
            "--state-dir",
            str(self.root / "scheduler"),
            "--pki-dir",
            str(self.pki),
            "--ready-file",
            str(ready),
            "--lease-ttl",
            self.lease_ttl,
            "--heartbeat-interval",
            self.heartbeat_interval,
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
            "--http-listen",  # none unless extra_args ask (a later --http-listen wins): tests start many
            "off",
            *extra_args,
        ]
        self.scheduler = Daemon("scheduler", argv, self.root / "logs" / "scheduler.log", self.env)
        self.scheduler.start()
        sched = self.scheduler

        def is_ready() -> str:
            if not sched.alive():
                raise ClusterError(f"scheduler exited with {sched.proc.returncode}:\n{sched.tail()}")  # type: ignore[union-attr]
            return ready.read_text().strip() if ready.exists() else ""

        self.address = wait_for(is_ready, timeout, "the scheduler's ready file")
        return self.address

    def add_agent(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        slots: int = 2,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        handle: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        zones: Iterable[str] | None = None,
    ) -> Daemon:
        """Start an agent named ``name`` (its certificate's name).

        ``handle`` is the key in :attr:`agents` and names its log (default: the name;
        give another to start a second process under the same name). ``state_dir``
        defaults to ``ROOT/agents/HANDLE``; a relative one is passed as is, resolved
        by the agent against ``cwd`` (default: this process's). ``zones`` go into its
        certificate (what it declares with ``--zones`` in ``extra_args`` may only narrow them).
        """
        if not self.address:
            raise ClusterError("start the scheduler first")
        handle = handle or name
        self.issue("agent", name, zones)
        argv = [
            self.python,
            "-m",
            "agent.main",
            "--scheduler",
            self.address,
            "--pki-dir",
            str(self.pki),
            "--name",
            name,
            "--slots",
            str(slots),
            "--state-dir",
            str(state_dir if state_dir is not None else self.root / "agents" / handle),
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
        ]
        if labels:
            argv += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        argv += list(extra_args)
        d = Daemon(handle, argv, self.root / "logs" / f"agent-{handle}.log", {**self.env, **(env or {})}, cwd=cwd)
        d.start()
        self.agents[handle] = d
        return d

    def state_dir(self, handle: str) -> Path:
        """The state dir of agent ``handle`` as its command line names it (absolute)."""
        d = self.agents[handle]
        path = Path(d.argv[d.argv.index("--state-dir") + 1])
        return path if path.is_absolute() else Path(d.cwd or os.getcwd()) / path

    def restart_agent(self, name: str, *, kill: bool = True, timeout: float = 30.0) -> Daemon:
        """Start agent ``name`` again with the same command line and state dir.

        ``kill`` (the default) SIGKILLs the running process first, as a crash would;
        with ``kill=False`` the old process must have exited already, or it is waited
        for (up to ``timeout``).
        """
        old = self.agents[name]
        if kill:
            old.kill()
        elif old.proc is not None:
            old.wait(timeout)
        d = Daemon(name, old.argv, old.log_path, old.env, cwd=old.cwd)
        d.start()
        self.agents[name] = d
        return d

    def client(self, name: str = "submitter", role: str = "submitter") -> Any:
        from outrider.client import Client

        ca, cert, key = self.issue(role, name)
        return Client(self.address, str(ca), str(cert), str(key))

    def client_env(self, name: str = "submitter", role: str = "submitter") -> dict[str, str]:
        """Environment for the ``outrider`` CLI to talk to this cluster as ``name`` in ``role``."""
        ca, cert, key = self.issue(role, name)
        return {
            **self.env,
            "OUTRIDER_SCHEDULER": self.address,
            "OUTRIDER_CA": str(ca),
            "OUTRIDER_CERT": str(cert),
            "OUTRIDER_KEY": str(key),
        }

    def wait_agents(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until every named agent is connected and ready."""
        want = set(names)
        with self.client("cluster-probe") as client:

            def ready() -> bool:
                for name in want:
                    d = self.agents.get(name)
                    if d is not None and not d.alive():
                        raise ClusterError(f"agent {name} exited:\n{d.tail()}")
                try:
                    agents = client.list_agents()
                except OutriderError:
                    return False
                return want <= {a.name for a in agents if a.state == "ready"}

            wait_for(ready, timeout, f"agents {sorted(want)} to connect", interval=0.05)

    def stop(self) -> None:
        """End every process we started, then any stage they left running."""
        for d in list(self.agents.values()):
            d.signal(signal.SIGINT)  # stop now, killing stages (SIGTERM would drain first)
        for d in list(self.agents.values()):
            d.stop(timeout=10)
        if self.scheduler is not None:
            self.scheduler.stop(timeout=10)
        self.kill_strays()

    def kill_strays(self) -> int:
        """Kill stage processes whose work dir is inside this cluster (left by a killed agent)."""
        import psutil

        killed = 0
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cwd"]):
            try:
                cwd = proc.info["cwd"]
                if proc.pid != me and cwd and Path(cwd).is_relative_to(self.root):
                    proc.kill()
                    killed += 1
            except (psutil.Error, OSError, ValueError):
                continue
        return killed

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
