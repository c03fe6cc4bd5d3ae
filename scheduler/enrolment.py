"""Enrolment and renewal: join tokens (:mod:`scheduler.core.tokens`) meet the signer.

* ``enrol(token, name, csr)``: a new machine, no certificate yet, on the enrolment port.
  The token is checked and spent (:meth:`JoinTokens.enrol`); the name must be a valid
  agent name, not revoked (``engine.revocations``) and not the name of an agent connected
  now; the certificate names ``spiffe://<domain>/agent/<name>`` and the token's zones.
* ``renew(identity, csr)``: an agent, over mTLS, for its own identity (read from its peer
  certificate, never from the request) and the zones of that certificate. Audited
  ``cert_renew``.

What an unauthenticated caller can cost is bounded here and in the enrolment server
(:mod:`scheduler.server`): a request of at most 64 KiB, a few calls in flight, and
:class:`PeerRate`, a token bucket per peer address.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from outrider import pki
from outrider.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from scheduler.core.audit import Action
from scheduler.core.engine import Engine
from scheduler.core.tokens import JoinTokens, Token
from scheduler.signer import Issued, Signer

#: Enrolment attempts per peer address: a burst of RATE_BURST, then one per RATE_EVERY_S.
RATE_BURST = 10
RATE_EVERY_S = 2.0
#: Peer addresses remembered by the rate limit (the oldest forgotten first).
RATE_PEERS = 4096


class PeerRate:
    """A token bucket per peer address (host only: a new source port is the same peer)."""

    def __init__(self, burst: int = RATE_BURST, every_s: float = RATE_EVERY_S, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.burst, self.every_s, self.clock = burst, every_s, clock
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, peer: str) -> None:
        """Spend one attempt of ``peer``; ResourceExhausted when it has none left."""
        host = peer.rpartition(":")[0] or peer
        now = self.clock()
        level, at = self._peers.pop(host, (float(self.burst), now))
        level = min(float(self.burst), level + (now - at) / self.every_s)
        if level < 1.0:
            self._peers[host] = (level, now)
            raise ResourceExhausted(f"too many enrolment attempts from this address; try again in {self.every_s:g}s")
        self._peers[host] = (level - 1.0, now)
        while len(self._peers) > RATE_PEERS:
            self._peers.popitem(last=False)


@dataclass(frozen=True)
class Enrolled:
    issued: Issued
    token: Token


class Enrolment:
    """The enrolment and renewal use cases (the servicers in :mod:`scheduler.api.identity` call these)."""

    def __init__(self, engine: Engine, signer: Signer) -> None:
        self.engine, self.signer = engine, signer
        self.tokens = JoinTokens(engine.journal, engine.wall, lambda: engine.caller())
        self.rate = PeerRate()

    def _admit(self, name: str) -> str | None:
        """Why ``name`` may not enrol now, or None."""
        if self.engine.revocations.is_revoked(name):
            return "it is revoked"
        agent = self.engine.registry.get(name)
        if agent is not None and agent.connected:
            return "an agent of that name is connected now"
        return None

    async def enrol(self, token: str, name: str, csr_pem: bytes, peer: str) -> Enrolled:
        self.rate.take(peer)
        self.signer.require()
        try:
            pki.validate_name(name)
            if name in pki.RESERVED_NAMES:
                raise InvalidArgument(f"invalid name {name!r}: reserved")
        except InvalidArgument as exc:
            raise InvalidArgument(f"name: {exc}") from None
        key = self.signer.public_key(csr_pem)

        async def sign(tok: Token) -> Issued:
            return self.signer.sign(name, key, tok.zones)

        tok, issued = await self.tokens.enrol(token, name, self._admit, sign)
        return Enrolled(issued, tok)

    async def renew(self, identity: pki.Identity, csr_pem: bytes) -> Issued:
        self.signer.require()
        if self.engine.revocations.is_revoked(identity.name):
            raise PermissionDenied(f"agent {identity.name!r} is revoked; its certificate is not renewed")
        key = self.signer.public_key(csr_pem)
        issued = self.signer.sign(identity.name, key, identity.zones)
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.not_after))
        self.engine.audit.note(Action.CERT_RENEW, identity.name, detail=f"serial {issued.serial:x}, expires {expiry}")
        await self.engine.barrier()  # the record is durable before the certificate is handed out
        return issued
