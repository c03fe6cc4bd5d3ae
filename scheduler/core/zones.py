"""Where an agent's zones come from, and what its own claim may do to them.

An agent's zones decide which data it may process (residency: placement and
``Download``), so they are not the agent's own claim. The first source that
says something is authoritative (its *attested* zones):

1. its certificate: the zones extension ``outrider pki issue … --zones`` writes
   (:data:`outrider.pki.ZONES_OID`), read from the certificate of each call;
2. the scheduler's configuration: ``[agent_zones]``, ``NAME = ["eu", "eu-west"]``.

What the agent declares (its ``zones`` setting, sent with Register and with a
heartbeat whose capabilities changed) may *narrow* an attested set, never widen
it: a declared zone outside it refuses that Register or heartbeat, whole, before
anything in it is applied (``PERMISSION_DENIED`` naming the zone, and an audit
record ``zone_refusal``). Declaring no zones takes the attested set as it is.

With no attested zones the agent's declaration stands (as before certificates
carried zones), unless the scheduler sets ``require_attested_zones``: then a
declaration is refused the same way, and an agent no source names sits in no
zone (it gets work and data that carry no residency only).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from outrider.errors import PermissionDenied
from scheduler.core.audit import Action
from scheduler.core.messages import Capabilities

log = logging.getLogger(__name__)

#: Where attested zones came from, as a refusal names it.
FROM_CERTIFICATE = "its certificate"
FROM_CONFIG = "the scheduler's agent_zones"


@dataclass(frozen=True)
class ZoneRules:
    """The scheduler's settings: zones fixed per agent name, and whether a claim alone counts."""

    #: agent name -> the zones the scheduler's configuration gives it (``[agent_zones]``)
    configured: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: refuse zones that only the agent itself declares (``require_attested_zones``)
    require_attested: bool = False

    def attested(self, name: str, cert_zones: frozenset[str] | None) -> tuple[frozenset[str] | None, str]:
        """(The agent's authoritative zones or None, where they come from)."""
        if cert_zones is not None:
            return cert_zones, FROM_CERTIFICATE
        fixed = self.configured.get(name)
        if fixed is not None:
            return fixed, FROM_CONFIG
        return None, ""

    def effective(self, name: str, cert_zones: frozenset[str] | None, declared: Iterable[str]) -> frozenset[str]:
        """The agent's zones, given what it declares; PermissionDenied if it claims more."""
        claim = frozenset(declared)
        attested, source = self.attested(name, cert_zones)
        if attested is None:
            if claim and self.require_attested:
                raise PermissionDenied(
                    f"agent {name} declares zones {_list(claim)}, but the scheduler requires attested zones "
                    "(require_attested_zones) and neither its certificate nor agent_zones names any: issue its "
                    "certificate with `outrider pki issue … --zones`, or list it under [agent_zones]"
                )
            return claim
        wider = claim - attested
        if wider:
            raise PermissionDenied(
                f"agent {name} declares zone(s) {_list(wider)} outside its zones {_list(attested)} "
                f"(from {source}): an agent's own claim may narrow its zones, never widen them"
            )
        return claim or attested

    def bound(self, name: str, cert_zones: frozenset[str] | None, zones: frozenset[str]) -> frozenset[str]:
        """``zones`` (what the registry holds for the agent) within what it is attested for now:
        a download is checked against the certificate of that very call, and the configuration
        of this scheduler, whatever was settled at the agent's last registration."""
        attested, _ = self.attested(name, cert_zones)
        if attested is not None:
            return zones & attested
        return frozenset() if self.require_attested else zones


class ZoneAuthority:
    """Settles an agent's zones on Register and heartbeat (:class:`ZoneRules`), auditing refusals."""

    def __init__(self, rules: ZoneRules, note: Callable[[Action, str, str, str], None]) -> None:
        self.rules = rules
        self._note = note  # AuditTrail.note: (action, target, outcome, detail)

    def settle(self, name: str, cert_zones: frozenset[str] | None, caps: Capabilities) -> Capabilities:
        """``caps`` with its zones replaced by the agent's effective zones; PermissionDenied
        (audited) if it declares a zone it is not attested for."""
        try:
            zones = self.rules.effective(name, cert_zones, caps.zones)
        except PermissionDenied as exc:
            log.warning("%s", exc)
            self._note(Action.ZONE_REFUSAL, name, "PERMISSION_DENIED", str(exc))
            raise
        return dataclasses.replace(caps, zones=tuple(sorted(zones)))

    def bound(self, name: str, cert_zones: frozenset[str] | None, zones: frozenset[str]) -> frozenset[str]:
        return self.rules.bound(name, cert_zones, zones)


def _list(zones: Iterable[str]) -> str:
    return ", ".join(sorted(zones)) or "(none)"
