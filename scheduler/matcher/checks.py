"""Feasibility: one named check object per clause, and the stacks built from them.

Each check says two things about a task's :class:`~scheduler.core.model.Needs` and an
:class:`AgentView`: ``check`` explains a rejection with a named reason (for ``plan``
and ``explain``), and ``passes``, a Python expression over ``n`` (the needs) and
``a`` (the view), says pass or fail as cheaply as possible. ``applies`` says whether
the clause constrains a task at all.

The fast path is generated from the checks: for each combination of applicable
clauses one function is compiled whose body is their ``passes`` expressions joined
by ``and`` (:func:`feasible`), so the hot path makes one call per agent and needs,
not one per clause, yet nobody writes it by hand. A test holds every check's fast
answer equal to ``check(...) is None`` on random cases.

Adding a constraint is one new check class here (plus its field in ``Needs`` and
on the wire); the clause list, the per-clause counts and the fast path follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scheduler.core.model import Needs
from scheduler.core.spec import Expr

# Reason names: a stable vocabulary printed by `plan` and `explain` and kept in --json.
REASON_CPUS = "insufficient cpus"
REASON_MEMORY = "insufficient memory"
REASON_DISK = "insufficient disk"
REASON_GPUS = "insufficient gpus"
REASON_GPU_MEMORY = "insufficient gpu memory"
REASON_GPU_MODEL = "gpu model mismatch"
REASON_LABEL_MISSING = "missing label"
REASON_LABEL_MISMATCH = "label mismatch"
REASON_EXPRESSION = "label expression false"
REASON_RESIDENCY = "outside residency zones"
REASON_RESIDENCY_CONFLICT = "residency conflict"
REASON_CLOCK_SUSPECT = "clock suspect"
REASON_CLOCK_SKEW = "clock skew too large"
REASON_FREE_CPUS = "cpus busy"
REASON_FREE_MEMORY = "memory busy"
REASON_FREE_GPUS = "gpus busy"
REASON_NO_SLOTS = "no free slots"
REASON_DISCONNECTED = "agent disconnected"


@dataclass(slots=True)
class AgentView:
    """What the matcher sees of one agent: capacity, labels, zones, clock, cache, and what is free.

    The registry keeps one view per agent current as capabilities arrive and tasks
    start and end (:meth:`hold`, :meth:`release`); the matcher only reads views.
    """

    name: str
    cpus: float
    memory: int
    disk: int
    gpus: int
    labels: dict[str, str]
    connected: bool = True
    free_slots: int = 0
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0
    running: int = 0
    gpu_models: tuple[str, ...] = ()
    gpu_free_memory: tuple[int, ...] = ()
    zones: frozenset[str] = frozenset()
    clock_skew: float = 0.0
    clock_suspect: bool = False
    bandwidth_bps: float = 0.0
    cached: dict[str, int] = field(default_factory=dict)

    def hold(self, needs: Needs) -> None:
        """Count a running task's resources."""
        self.used_cpus += needs.cpus
        self.used_memory += needs.memory
        self.used_gpus += needs.gpus
        self.running += 1

    def release(self, needs: Needs) -> None:
        """The inverse of :meth:`hold`, when the task ends."""
        self.used_cpus = max(0.0, self.used_cpus - needs.cpus)
        self.used_memory = max(0, self.used_memory - needs.memory)
        self.used_gpus = max(0, self.used_gpus - needs.gpus)
        self.running = max(0, self.running - 1)

    def reserve(self, needs: Needs) -> None:
        """Hold a task's resources and take one of the slots the agent offered in this pass."""
        self.free_slots -= 1
        self.hold(needs)


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


class Check:
    """One feasibility clause. Subclasses set ``clause`` and ``passes`` and implement ``check``."""

    #: The clause's name in per-clause counts (``plan --json`` ``passing``).
    clause = ""
    #: A Python expression over ``n`` (Needs) and ``a`` (AgentView), true when the agent passes;
    #: empty: the fast path asks ``check`` instead.
    passes = ""

    def __init__(self) -> None:
        self.ok: Callable[[Needs, AgentView], bool] = _compile((self,))

    def applies(self, needs: Needs) -> bool:
        """Whether this clause constrains tasks with these needs at all."""
        return True

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        """None when the agent passes, else why not."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<check {self.clause}>"


def _compile(checks: tuple[Check, ...]) -> Callable[[Needs, AgentView], bool]:
    """One function that is true when every check in ``checks`` passes (the generated fast path).

    Built with ``exec`` from the checks' ``passes`` expressions, the way ``dataclasses`` builds
    its methods: the body is fixed text from this module, never input.
    """
    namespace: dict[str, object] = {"expr_holds": expr_holds}
    terms = []
    for i, c in enumerate(checks):
        if c.passes:
            terms.append(f"({c.passes})")
        else:
            namespace[f"check{i}"] = c.check
            terms.append(f"check{i}(n, a) is None")
    source = f"def passes(n, a):\n    return {' and '.join(terms) or 'True'}\n"
    exec(source, namespace)
    fn: Callable[[Needs, AgentView], bool] = namespace["passes"]  # type: ignore[assignment]
    return fn


# --------------------------------------------------------------------------- static clauses


class Cpus(Check):
    """The agent has as many cores as the task asks for."""

    clause = "cpus"
    passes = "n.cpus <= a.cpus"

    def applies(self, needs: Needs) -> bool:
        return needs.cpus > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.cpus > agent.cpus:
            return Rejection(REASON_CPUS, f"needs {needs.cpus:g} cpus, agent has {agent.cpus:g}")
        return None


class Memory(Check):
    clause = "memory"
    passes = "n.memory <= a.memory"

    def applies(self, needs: Needs) -> bool:
        return needs.memory > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.memory > agent.memory:
            return Rejection(
                REASON_MEMORY, f"needs {fmt_bytes(needs.memory)} memory, agent has {fmt_bytes(agent.memory)}"
            )
        return None


class Disk(Check):
    clause = "disk"
    passes = "n.disk <= a.disk"

    def applies(self, needs: Needs) -> bool:
        return needs.disk > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.disk > agent.disk:
            return Rejection(REASON_DISK, f"needs {fmt_bytes(needs.disk)} disk, agent has {fmt_bytes(agent.disk)}")
        return None


class Gpus(Check):
    clause = "gpus"
    passes = "n.gpus <= a.gpus"

    def applies(self, needs: Needs) -> bool:
        return needs.gpus > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.gpus > agent.gpus:
            return Rejection(REASON_GPUS, f"needs {needs.gpus} gpus, agent has {agent.gpus}")
        return None


def _gpus_wanted(needs: Needs) -> int:
    return max(needs.gpus, 1)


class GpuModel(Check):
    """Enough GPUs whose model contains the requested name (case-insensitive)."""

    clause = "gpu_model"

    def applies(self, needs: Needs) -> bool:
        return bool(needs.gpu_model)

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if not needs.gpu_model:
            return None
        want = needs.gpu_model.lower()
        have = sum(1 for m in agent.gpu_models if want in m.lower())
        if have < _gpus_wanted(needs):
            models = ", ".join(sorted(set(agent.gpu_models))) or "no GPUs"
            return Rejection(
                REASON_GPU_MODEL, f"needs {_gpus_wanted(needs)} {needs.gpu_model} GPU(s), agent has {models}"
            )
        return None


class GpuMemory(Check):
    """Enough GPUs with at least the requested free memory each."""

    clause = "gpu_memory"

    def applies(self, needs: Needs) -> bool:
        return needs.gpu_memory > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.gpu_memory <= 0:
            return None
        have = sum(1 for m in agent.gpu_free_memory if m >= needs.gpu_memory)
        if have < _gpus_wanted(needs):
            best = max(agent.gpu_free_memory, default=0)
            return Rejection(
                REASON_GPU_MEMORY,
                f"needs {fmt_bytes(needs.gpu_memory)} free per GPU on "
                f"{_gpus_wanted(needs)} GPU(s), agent's best has {fmt_bytes(best)}",
            )
        return None


class Labels(Check):
    """Every required label is present with the required value."""

    clause = "labels"
    passes = "all(a.labels.get(k) == v for k, v in n.labels)"

    def applies(self, needs: Needs) -> bool:
        return bool(needs.labels)

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        for key, want in needs.labels:
            have = agent.labels.get(key)
            if have is None:
                return Rejection(REASON_LABEL_MISSING, f"label {key}={want} required, agent has no {key}")
            if have != want:
                return Rejection(REASON_LABEL_MISMATCH, f"label {key}={want} required, agent has {key}={have}")
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def expr_holds(expr: Expr, labels: dict[str, str]) -> bool:
    """Evaluate one label expression against an agent's labels."""
    have = labels.get(expr.key)
    op = expr.op
    if op == "exists":
        return have is not None
    if op == "not exists":
        return have is None
    if op == "=":
        return have is not None and have == expr.values[0]
    if op == "!=":
        return have != expr.values[0]
    if op == "in":
        return have is not None and have in expr.values
    if op == "not in":
        return have not in expr.values
    if op in (">=", "<="):
        a, b = _number(have) if have is not None else None, _number(expr.values[0])
        if a is None or b is None:
            return False
        return a >= b if op == ">=" else a <= b
    return False


class Expressions(Check):
    """Every label expression holds (all failing ones are named)."""

    clause = "expressions"
    passes = "all(expr_holds(e, a.labels) for e in n.exprs)"

    def applies(self, needs: Needs) -> bool:
        return bool(needs.exprs)

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        failing = [e for e in needs.exprs if not expr_holds(e, agent.labels)]
        if failing:
            shown = "; ".join(
                f"{e} (agent has {e.key}={agent.labels[e.key]})"
                if e.key in agent.labels
                else f"{e} (agent has no {e.key})"
                for e in failing
            )
            return Rejection(REASON_EXPRESSION, shown)
        return None


class Residency(Check):
    """The agent sits in one of the zones the task's data may be processed in.

    A hard rule: no score can outweigh it.
    """

    clause = "residency"
    passes = "n.residency is None or bool(a.zones & n.residency)"

    def applies(self, needs: Needs) -> bool:
        return needs.residency is not None

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.residency is None:
            return None
        if not needs.residency:
            return Rejection(REASON_RESIDENCY_CONFLICT, "the task's residency and its inputs' have no zone in common")
        if agent.zones & needs.residency:
            return None
        zones = ", ".join(sorted(agent.zones)) or "no zones"
        return Rejection(
            REASON_RESIDENCY,
            f"data may be processed only in {', '.join(sorted(needs.residency))}; agent sits in {zones}",
        )


class Clock(Check):
    """With a max_clock_skew, the agent's clock is trusted and close enough."""

    clause = "clock"
    passes = "n.max_clock_skew <= 0 or not (a.clock_suspect or a.clock_skew > n.max_clock_skew)"

    def applies(self, needs: Needs) -> bool:
        return needs.max_clock_skew > 0

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if needs.max_clock_skew <= 0:
            return None
        if agent.clock_suspect:
            return Rejection(REASON_CLOCK_SUSPECT, f"agent's clock is suspect (skew {agent.clock_skew:.3f}s)")
        if agent.clock_skew > needs.max_clock_skew:
            return Rejection(
                REASON_CLOCK_SKEW,
                f"clock offset + uncertainty {agent.clock_skew:.3f}s exceeds max_clock_skew {needs.max_clock_skew:g}s",
            )
        return None


# --------------------------------------------------------------------------- dynamic clause


class Free(Check):
    """Dynamic: connected, a free slot, and the resources not held by running tasks cover the request now."""

    clause = "free"
    passes = (
        "a.connected and a.free_slots > 0 and n.cpus <= a.cpus - a.used_cpus + 1e-9"
        " and n.memory <= a.memory - a.used_memory and n.gpus <= a.gpus - a.used_gpus"
    )

    def check(self, needs: Needs, agent: AgentView) -> Rejection | None:
        if not agent.connected:
            return Rejection(REASON_DISCONNECTED, "agent is not connected")
        if agent.free_slots <= 0:
            return Rejection(REASON_NO_SLOTS, "agent has no free slot")
        if needs.cpus > agent.cpus - agent.used_cpus + 1e-9:
            return Rejection(REASON_FREE_CPUS, f"{agent.cpus - agent.used_cpus:g} of {agent.cpus:g} cpus free")
        if needs.memory > agent.memory - agent.used_memory:
            return Rejection(REASON_FREE_MEMORY, f"{fmt_bytes(agent.memory - agent.used_memory)} memory free")
        if needs.gpus > agent.gpus - agent.used_gpus:
            return Rejection(REASON_FREE_GPUS, f"{agent.gpus - agent.used_gpus} gpus free")
        return None


# The stack, in order, one line per clause. Static clauses are what `plan` reports.
STATIC_CHECKS: tuple[Check, ...] = (
    Cpus(),  # total cores cover the request
    Memory(),  # total memory covers it
    Disk(),  # free disk covers it
    Gpus(),  # enough GPUs
    GpuModel(),  # of the requested model
    GpuMemory(),  # with enough free memory each
    Labels(),  # label selector (key=value) matches
    Expressions(),  # every label expression holds
    Residency(),  # the agent sits in an allowed zone (hard rule)
    Clock(),  # the agent's clock is within max_clock_skew and not suspect
)
FREE = Free()
DYNAMIC_CHECKS: tuple[Check, ...] = (
    FREE,  # connected, a free slot, and free resources now
)
#: Clause names, in STATIC_CHECKS order, for per-clause pass counts.
CLAUSES: tuple[str, ...] = tuple(c.clause for c in STATIC_CHECKS)


def rejections(needs: Needs, agent: AgentView, checks: tuple[Check, ...] = STATIC_CHECKS) -> list[Rejection]:
    """Every failing clause (not just the first), for explanations."""
    return [r for r in (c.check(needs, agent) for c in checks) if r is not None]


# id(needs) -> (needs, its fast path): keyed by identity because hashing a Needs costs more than
# the checks themselves; the entry keeps the object alive, so its id cannot be reused while cached.
_fast: dict[int, tuple[Needs, Callable[[Needs, AgentView], bool]]] = {}
_compiled: dict[tuple[Check, ...], Callable[[Needs, AgentView], bool]] = {}


def fast_path(needs: Needs) -> Callable[[Needs, AgentView], bool]:
    """The compiled conjunction of the static checks that constrain ``needs``."""
    entry = _fast.get(id(needs))
    if entry is not None and entry[0] is needs:
        return entry[1]
    checks = tuple(c for c in STATIC_CHECKS if c.applies(needs))
    fn = _compiled.get(checks)
    if fn is None:
        fn = _compiled[checks] = _compile(checks)
    if len(_fast) > 100_000:
        _fast.clear()
    _fast[id(needs)] = (needs, fn)
    return fn


def feasible(needs: Needs, agent: AgentView) -> bool:
    """Static feasibility: the same answer as ``not rejections(needs, agent)``, without
    building any explanation (the hot path: most agent × needs pairs fail)."""
    entry = _fast.get(id(needs))  # fast_path(), inlined: this runs for every agent × needs pair
    if entry is not None and entry[0] is needs:
        return entry[1](needs, agent)
    return fast_path(needs)(needs, agent)


def fits_now(needs: Needs, agent: AgentView) -> bool:
    """The dynamic clause alone: can the agent take the task with what is free right now?"""
    return FREE.ok(needs, agent)
