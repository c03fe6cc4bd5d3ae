"""Fair share between tenants, and the order in which runs are served.

Runs are served by priority first, then by dominant resource fairness (Ghodsi et
al., NSDI 2011): the tenant whose largest share of any resource in use (cpus,
memory, GPUs of the connected agents) is smallest goes first; ties go to the
tenant served least recently, so equal shares (both zero on a one-slot agent,
say) alternate instead of favouring the oldest run forever; then by age.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from scheduler.core.model import Needs, Run


class FairShare:
    def __init__(self, capacity: list[float]) -> None:
        self._capacity = capacity  # the registry's connected capacity (cpus, memory, gpus), read live
        self._usage: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._served: dict[str, int] = {}  # tenant -> sequence number of its last grant
        self._grants = 0

    def hold(self, run: Run, needs: Needs) -> None:
        """Count a leased task against its run's concurrency and its tenant's share."""
        self._grants += 1
        self._served[run.tenant] = self._grants
        run.running += 1
        u = self._usage[run.tenant]
        u[0] += needs.cpus
        u[1] += needs.memory
        u[2] += needs.gpus

    def release(self, run: Run, needs: Needs) -> None:
        run.running = max(0, run.running - 1)
        u = self._usage[run.tenant]
        u[0] = max(0.0, u[0] - needs.cpus)
        u[1] = max(0.0, u[1] - needs.memory)
        u[2] = max(0.0, u[2] - needs.gpus)

    def dominant_share(self, tenant: str) -> float:
        """The tenant's largest share of any resource in use."""
        u = self._usage.get(tenant)
        if u is None:
            return 0.0
        return max((used / total for used, total in zip(u, self._capacity, strict=True) if total > 0), default=0.0)

    def key(self, run: Run) -> tuple[int, float, int, int]:
        """Where ``run`` stands in the serving order (smaller goes first)."""
        return (-run.priority, round(self.dominant_share(run.tenant), 9), self._served.get(run.tenant, 0), run.seq)

    def order(self, runs: Iterable[Run]) -> list[Run]:
        """``runs`` in serving order; each tenant's share is computed once."""
        tenant_keys: dict[str, tuple[float, int]] = {}

        def key(run: Run) -> tuple[int, float, int, int]:
            k = tenant_keys.get(run.tenant)
            if k is None:
                k = tenant_keys[run.tenant] = (
                    round(self.dominant_share(run.tenant), 9),
                    self._served.get(run.tenant, 0),
                )
            return (-run.priority, k[0], k[1], run.seq)

        return sorted(runs, key=key)
