"""Residency of artifacts: where their bytes may be processed, and who may download them.

Residency is a hard rule end to end: an output carries the residency of the data
it came from (its task's effective residency), and an agent outside an artifact's
zones may neither be placed on with it (placement checks) nor download it (here).
"""

from __future__ import annotations

from scheduler.core.model import Output


class ResidencyIndex:
    def __init__(self) -> None:
        self._zones: dict[str, frozenset[str] | None] = {}  # digest -> zones (None: anywhere)

    def note(self, o: Output) -> None:
        """Remember where an artifact's bytes may be processed (the most restrictive tag wins)."""
        if o.digest not in self._zones:
            self._zones[o.digest] = o.residency
            return
        known = self._zones[o.digest]
        if known is None:
            self._zones[o.digest] = o.residency
        elif o.residency is not None:
            self._zones[o.digest] = known & o.residency

    def refusal(self, agent: str, agent_zones: frozenset[str], digest: str) -> str | None:
        """None if the agent may receive these bytes; else why not."""
        zones = self._zones.get(digest)
        if zones is None:
            return None
        if agent_zones & zones:
            return None
        return (
            f"artifact {digest[:12]} may be processed only in zones {', '.join(sorted(zones)) or '(none)'}; "
            f"agent {agent} sits in {', '.join(sorted(agent_zones)) or 'no zones'}"
        )
