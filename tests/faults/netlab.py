"""A network lab: hosts as network namespaces joined through a router namespace, with bad links on demand.

Layout (one /24 per link; the router is .1, the host .2)::

    [sched]eth0 ──veth── r-sched[ router ]r-edge1 ──veth── eth0[edge1]
       10.77.1.2                 (forwarding)                10.77.2.2

Every host reaches every other through the router, so a link can be made bad at the
router, as a real edge link is, without the hosts knowing. What each impairment is
done with, chosen for this kernel (it has no ``netem``; see ``netem_available``):

* rate: ``tbf`` on the egress of both ends of the host's veth pair;
* loss: an nftables rule ``numgen random mod 10000 < N drop`` in the router's forward
  chain (a chain per host and direction), and a partition is a plain ``drop`` there;
* delay, jitter, duplication, reordering: ``netem`` on both veth ends where the kernel
  has it; otherwise the host's traffic is policy-routed, in the router, through a pair of
  TUN devices served by ``linkemu.py`` (a user-space netem, one process per host):

      uplink:   r-HOST ─(ip rule iif r-HOST)→ th-HOST → linkemu → tc-HOST → main table
      downlink: → (ip rule to HOST's /24) → tc-HOST → linkemu → th-HOST ─(iif th-HOST: main)→ r-HOST

Cleanup is guaranteed three ways: ``NetLab.close()`` (also on ``with`` exit) kills every
process inside the lab's namespaces and deletes them (veths, qdiscs, nft tables and TUN
devices live inside and go with them; nothing is ever created in the root namespace);
``linkemu.py`` exits when its stdin closes, i.e. when the test process dies; and
``sweep()`` removes what a crashed earlier run left, by the names' unique prefix
(``orf<pid>x<n>-``, swept once that pid is gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

HERE = Path(__file__).resolve().parent
LINKEMU = HERE / "linkemu.py"
PROBE = HERE / "probe.py"
PREFIX_ROOT = "orf"
_PREFIX_RE = re.compile(rf"^{PREFIX_ROOT}(\d+)x\d+-")
_HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # r-/th-/tc- + name fits IFNAMSIZ (15)
NFT_TABLE = "outrider_lab"
CLONE_NEWNET = 0x40000000
_counter = iter(range(1, 1 << 30))
T = TypeVar("T")


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its stderr."""


# --------------------------------------------------------------------------- commands


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 20.0, input: str | None = None) -> str:
    """Run a command; its stdout. LabError (with stderr) when it fails and ``check``."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def netns_list() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    out = sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in out.split() if x.isdigit()]


def kill_netns(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in namespace ``ns`` until none is left, then delete it.

    A namespace outlives ``ip netns del`` while a process (or a socket) still holds it,
    and with it its veths; so the processes go first. Stopped processes die on SIGKILL too.
    """
    deadline = time.monotonic() + timeout
    while pids := netns_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} in {ns} survive SIGKILL")
        time.sleep(0.02)
    sh(["ip", "netns", "del", ns], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove namespaces left by an earlier run of this suite that crashed; the names removed.

    A lab's names carry the pid of the process that made it; a namespace whose owner is
    gone is a leftover. Labs of a live process (a concurrent run) are left alone.
    """
    removed = []
    for ns in netns_list():
        m = _PREFIX_RE.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            kill_netns(ns)
            removed.append(ns)
    return removed


# --------------------------------------------------------------------------- support


def unsupported_reason() -> str | None:
    """Why the lab cannot run here (None: it can). Checked once per session by the fixtures."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the network lab needs root (ip netns, tc, nft)"
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (make sysdeps installs {pkg})"
    name = f"{PREFIX_ROOT}{os.getpid()}x0-probe"
    try:
        sh(["ip", "netns", "add", name])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        sh(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        sh(
            [
                "tc",
                "-n",
                name,
                "qdisc",
                "add",
                "dev",
                "v0",
                "root",
                "tbf",
                "rate",
                "1mbit",
                "burst",
                "3028",
                "latency",
                "100ms",
            ]
        )
        sh(["ip", "netns", "exec", name, "nft", "add", "table", "inet", NFT_TABLE])
    except LabError as exc:
        return f"a kernel feature the lab needs is missing: {exc}"
    finally:
        kill_netns(name)
    return None


def delay_unsupported_reason() -> str | None:
    """Why delay, jitter, duplication and reordering cannot be emulated here (None: they can)."""
    if netem_available() or os.path.exists("/dev/net/tun"):
        return None
    return "neither the netem qdisc nor /dev/net/tun is available to delay packets"


_netem: bool | None = None


def netem_available() -> bool:
    """Whether this kernel has the ``netem`` qdisc (tried in a scratch namespace, once)."""
    global _netem
    if _netem is None:
        name = f"{PREFIX_ROOT}{os.getpid()}x0-netem"
        sh(["ip", "netns", "add", name])
        try:
            sh(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            r = subprocess.run(
                ["tc", "-n", name, "qdisc", "add", "dev", "v0", "root", "netem", "delay", "1ms"],
                capture_output=True,
                text=True,
            )
            _netem = r.returncode == 0
        finally:
            kill_netns(name)
    return _netem


# --------------------------------------------------------------------------- threads in a namespace

_libc = ctypes.CDLL(None, use_errno=True)


def call_in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` on a thread that entered namespace ``ns``; its result.

    setns() moves only the calling thread, so a short-lived thread enters the namespace,
    makes what it must (a socket is bound to the namespace it was created in, for life)
    and ends; the test process itself never leaves the root namespace.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"in-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- impairments


@dataclass(frozen=True)
class Impairment:
    """What one direction of a link does to packets; netem's vocabulary, percentages 0-100."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0
    rate_kbit: float = 0.0

    def delays(self) -> bool:
        """Whether it needs netem or the TUN forwarder (rate and loss do not)."""
        return bool(self.delay_ms or self.jitter_ms or self.duplicate_pct or self.reorder_pct)

    def emulator_json(self) -> dict[str, float]:
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "duplicate_pct": self.duplicate_pct,
            "reorder_pct": self.reorder_pct,
        }

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms}ms"]
        if self.jitter_ms:
            args.append(f"{self.jitter_ms}ms")
        if self.duplicate_pct:
            args += ["duplicate", f"{self.duplicate_pct}%"]
        if self.reorder_pct:
            args += ["reorder", f"{self.reorder_pct}%"]
        return args

    def __str__(self) -> str:
        parts = []
        if self.delay_ms or self.jitter_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f" ±{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        for name, value in (("loss", self.loss_pct), ("duplicate", self.duplicate_pct), ("reorder", self.reorder_pct)):
            if value:
                parts.append(f"{name} {value:g}%")
        if self.rate_kbit:
            parts.append(f"rate {self.rate_kbit:g}kbit/s")
        return " ".join(parts) or "clean"


CLEAN = Impairment()


def _tbf_args(rate_kbit: float) -> list[str]:
    """tbf with a small bucket (two frames), so a measured rate is the asked rate from the first packet."""
    return ["tbf", "rate", f"{rate_kbit:g}kbit", "burst", "3028", "latency", "400ms"]


# --------------------------------------------------------------------------- processes


class LabProcess:
    """One process we started inside a host's namespace (``ip netns exec`` execs it: same pid)."""

    def __init__(self, name: str, host: str, popen: subprocess.Popen[Any], log_path: Path | None) -> None:
        self.name = name
        self.host = host
        self.proc = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def terminate(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` (SIGCONT too, in case it is frozen), then SIGKILL after ``timeout``; the exit code."""
        if self.alive():
            self.send(sig)
            self.send(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


# --------------------------------------------------------------------------- the lab


@dataclass
class _Emu:
    """A running linkemu.py for one host."""

    proc: subprocess.Popen[str]
    host_dev: str
    core_dev: str


@dataclass
class _Host:
    name: str
    index: int
    ns: str
    up: Impairment = CLEAN
    down: Impairment = CLEAN
    partitioned: bool = False
    emu: _Emu | None = None
    rules: list[list[str]] = field(default_factory=list)


class NetLab:
    """Hosts in namespaces behind one router namespace; see the module docstring.

    ``emulator`` picks how delay-type impairments are made: ``"auto"`` (netem where the
    kernel has it, else the TUN forwarder), ``"netem"`` or ``"tun"``.
    """

    def __init__(self, hosts: Sequence[str], *, emulator: str = "auto", python: str = sys.executable) -> None:
        for h in hosts:
            if not _HOST_RE.match(h):
                raise ValueError(f"host name {h!r}: lowercase letters and digits, at most 12")
        if emulator not in ("auto", "netem", "tun"):
            raise ValueError(f"emulator {emulator!r}: auto, netem or tun")
        self.emulator = ("netem" if netem_available() else "tun") if emulator == "auto" else emulator
        self.python = python
        self.prefix = f"{PREFIX_ROOT}{os.getpid()}x{next(_counter)}"
        self.router_ns = f"{self.prefix}-router"
        self.hosts = {h: _Host(h, i + 1, f"{self.prefix}-{h}") for i, h in enumerate(hosts)}
        self.processes: list[LabProcess] = []
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ----- building

    def _build(self) -> None:
        r = self.router_ns
        sh(["ip", "netns", "add", r])
        # Forwarding on; reverse-path filtering off, or packets the TUN forwarder re-injects
        # (whose source lies behind another interface) would be dropped.
        self._sysctl(r, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        sh(["ip", "-n", r, "link", "set", "lo", "up"])
        chains = []
        for h in self.hosts.values():
            sh(["ip", "netns", "add", h.ns])
            # Created straight inside the two namespaces: nothing ever appears in the root one.
            sh(
                [
                    "ip",
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    h.ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.rdev(h.name),
                    "netns",
                    r,
                ]
            )
            sh(["ip", "-n", h.ns, "addr", "add", f"{self.ip(h.name)}/24", "dev", "eth0"])
            sh(["ip", "-n", r, "addr", "add", f"{self._net(h)}.1/24", "dev", self.rdev(h.name)])
            for ns, dev in ((h.ns, "lo"), (h.ns, "eth0"), (r, self.rdev(h.name))):
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "-n", h.ns, "route", "add", "default", "via", f"{self._net(h)}.1"])
            chains.append(h)
        rules = "\n".join(
            f'    iifname "{self.rdev(h.name)}" jump up_{h.name}\n    oifname "{self.rdev(h.name)}" jump down_{h.name}'
            for h in chains
        )
        per_host = "\n".join(f"  chain up_{h.name} {{\n  }}\n  chain down_{h.name} {{\n  }}" for h in chains)
        self._nft(
            f"table inet {NFT_TABLE} {{\n  chain forward {{\n"
            f"    type filter hook forward priority 0; policy accept;\n{rules}\n  }}\n{per_host}\n}}\n"
        )

    def _net(self, h: _Host) -> str:
        return f"10.77.{h.index}"

    def _sysctl(self, ns: str, *settings: str) -> None:
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings])

    def _nft(self, script: str) -> None:
        sh(["ip", "netns", "exec", self.router_ns, "nft", "-f", "-"], input=script)

    # ----- names and addresses

    def ip(self, host: str) -> str:
        return f"{self._net(self.hosts[host])}.2"

    def netns(self, host: str) -> str:
        return self.router_ns if host == "router" else self.hosts[host].ns

    @staticmethod
    def rdev(host: str) -> str:
        """The router's end of ``host``'s veth."""
        return f"r-{host}"

    # ----- processes

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        name: str = "",
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: str | os.PathLike[str] | None = None,
        text: bool = False,
    ) -> LabProcess:
        """Start ``argv`` inside ``host``'s namespace, in its own session; tracked for cleanup."""
        log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                self.argv(host, argv),
                stdin=stdin,
                stdout=log if log is not None else stdout,
                stderr=subprocess.STDOUT if log is not None else None,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                text=text,
            )
        finally:
            if log is not None:
                log.close()
        p = LabProcess(name or argv[0], host, popen, log_path)
        with self._lock:
            self.processes.append(p)
        return p

    def run(self, host: str, argv: Sequence[str], timeout: float = 60.0, check: bool = True) -> str:
        return sh(self.argv(host, argv), timeout=timeout, check=check)

    def probe_server(self, host: str, *args: str) -> LabProcess:
        """Start a probe.py server mode on ``host`` and wait for its ``ready``."""
        p = self.spawn(
            host, [self.python, str(PROBE), *args], name=f"probe {args[0]}", stdout=subprocess.PIPE, text=True
        )
        assert p.proc.stdout is not None
        line = p.proc.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise LabError(f"probe {args} did not start: {line!r}")
        return p

    def probe(self, host: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run a probe.py client mode on ``host``; its JSON result."""
        out = self.run(host, [self.python, str(PROBE), *args], timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    @staticmethod
    def collect(server: LabProcess, timeout: float = 60.0) -> dict[str, Any]:
        """The JSON a probe server prints when it is done."""
        out, _ = server.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    # ----- impairments

    def impair(
        self,
        host: str,
        link: Impairment | None = None,
        *,
        up: Impairment | None = None,
        down: Impairment | None = None,
    ) -> None:
        """Make ``host``'s link bad: ``link`` both ways, or ``up`` (from the host) and ``down`` (to it).

        Replaces whatever impairment the link had; ``clear(host)`` makes it clean again.
        """
        h = self.hosts[host]
        h.up = up or link or CLEAN
        h.down = down or link or CLEAN
        self._apply_loss(h)
        self._apply_rate_and_delay(h)

    def clear(self, host: str) -> None:
        self.impair(host, CLEAN)

    def partition(self, host: str) -> None:
        """Drop every packet to and from ``host`` at the router (its own namespace still works)."""
        self.hosts[host].partitioned = True
        self._apply_loss(self.hosts[host])

    def heal(self, host: str) -> None:
        self.hosts[host].partitioned = False
        self._apply_loss(self.hosts[host])

    @contextlib.contextmanager
    def partitioned(self, host: str) -> Iterator[None]:
        self.partition(host)
        try:
            yield
        finally:
            self.heal(host)

    def _apply_loss(self, h: _Host) -> None:
        lines = []
        for chain, imp in ((f"up_{h.name}", h.up), (f"down_{h.name}", h.down)):
            lines.append(f"flush chain inet {NFT_TABLE} {chain}")
            if h.partitioned:
                lines.append(f"add rule inet {NFT_TABLE} {chain} drop")
            elif imp.loss_pct:
                per_10k = round(imp.loss_pct * 100)
                lines.append(f"add rule inet {NFT_TABLE} {chain} numgen random mod 10000 < {per_10k} drop")
        self._nft("\n".join(lines) + "\n")

    def _apply_rate_and_delay(self, h: _Host) -> None:
        r, rdev = self.router_ns, self.rdev(h.name)
        # down: the router's end sends toward the host; up: the host's end sends toward the router.
        for ns, dev, imp in ((r, rdev, h.down), (h.ns, "eth0", h.up)):
            sh(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            netem = self.emulator == "netem" and imp.delays()
            if netem:
                sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", *imp.netem_args()])
            if imp.rate_kbit:
                parent = ["parent", "1:1", "handle", "10:"] if netem else ["root"]  # netem's one class
                sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, *_tbf_args(imp.rate_kbit)])
        if self.emulator == "tun":
            if h.up.delays() or h.down.delays():
                emu = h.emu or self._start_emu(h)
                self._emu_send(emu, {"up": h.up.emulator_json(), "down": h.down.emulator_json()})
            elif h.emu is not None:
                self._stop_emu(h)

    # ----- the TUN forwarder

    def _start_emu(self, h: _Host) -> _Emu:
        r = self.router_ns
        host_dev, core_dev = f"th-{h.name}", f"tc-{h.name}"
        proc = subprocess.Popen(
            self.argv("router", [self.python, str(LINKEMU), "--host-dev", host_dev, "--core-dev", core_dev]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            proc.wait()
            raise LabError(f"linkemu for {h.name} did not start: {line!r}")
        emu = _Emu(proc, host_dev, core_dev)
        h.emu = emu
        t_up, t_down = str(1000 + h.index), str(2000 + h.index)
        for dev in (host_dev, core_dev):
            sh(["ip", "-n", r, "link", "set", dev, "up"])
        sh(["ip", "-n", r, "route", "add", "default", "dev", host_dev, "table", t_up])
        sh(["ip", "-n", r, "route", "add", "default", "dev", core_dev, "table", t_down])
        h.rules = [
            # What linkemu wrote toward the host (arriving "from" th-) goes to the host.
            ["pref", str(100 + h.index), "iif", host_dev, "lookup", "main"],
            # What the host sends goes into linkemu's host side.
            ["pref", str(200 + h.index), "iif", self.rdev(h.name), "lookup", t_up],
            # What anyone sends to the host goes into linkemu's core side.
            ["pref", str(300 + h.index), "to", f"{self._net(h)}.0/24", "lookup", t_down],
        ]
        for rule in h.rules:
            sh(["ip", "-n", r, "rule", "add", *rule])
        return emu

    def _emu_send(self, emu: _Emu, obj: dict[str, Any]) -> None:
        assert emu.proc.stdin is not None
        emu.proc.stdin.write(json.dumps(obj) + "\n")
        emu.proc.stdin.flush()

    def emu_stats(self, host: str) -> dict[str, int]:
        """Packet counts of ``host``'s forwarder (up, down, dup, written, write_errors)."""
        emu = self.hosts[host].emu
        if emu is None:
            return {}
        self._emu_send(emu, {"stats": 1})
        assert emu.proc.stdout is not None
        return json.loads(emu.proc.stdout.readline())  # type: ignore[no-any-return]

    def _stop_emu(self, h: _Host) -> None:
        for rule in h.rules:
            sh(["ip", "-n", self.router_ns, "rule", "del", *rule], check=False)
        h.rules = []
        if h.emu is not None:
            proc = h.emu.proc
            h.emu = None
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()  # it exits on EOF, taking its TUN devices (and their routes) along
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ----- teardown

    def close(self) -> None:
        """Kill every process in the lab and delete every namespace; idempotent, never raises on a leftover.

        Raises LabError at the end if something could not be removed (after trying all of it).
        """
        if self._closed:
            return
        self._closed = True
        problems = []
        for h in self.hosts.values():
            try:
                self._stop_emu(h)
            except Exception as exc:  # the namespaces go anyway
                problems.append(f"linkemu {h.name}: {exc}")
        for p in self.processes:
            p.send(signal.SIGKILL)
        for p in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(10)
        for ns in [*(h.ns for h in self.hosts.values()), self.router_ns]:
            try:
                kill_netns(ns)
            except LabError as exc:
                problems.append(str(exc))
        left = [ns for ns in netns_list() if ns.startswith(self.prefix + "-")]
        if left or problems:
            raise LabError(f"lab {self.prefix} not fully removed: namespaces {left}; {problems}")

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
