"""Join tokens: what lets a new machine enrol as an agent without a certificate.

An admin makes a token (``outrider token create``); the new machine presents it, with a
CSR and the name it wants, to the enrolment port (``outrider-agent join``). A token is
one printable string, ``<token_id>.<secret>``: the id is public (it names the token in
the audit log and ``token list``), the secret is shown once and only its SHA-256 is kept
(migration 8, ``join_tokens``). A token carries an expiry, a number of uses left, and
the labels and zones the agents enrolled with it get (their zones in the certificate).

Enrolment with a token (:meth:`JoinTokens.enrol`), in this order::

    malformed ─▶ refused "malformed join token" (nothing looked up)
    unknown id, or wrong secret ─▶ refused "invalid join token" (the same words: no oracle)
    expired, used up ─▶ refused, saying which (the bearer proved it holds the secret)
    name refused by the caller's admit() (revoked, a live agent) ─▶ refused, saying why
    ──▶ signed; uses_left - 1 and the ``enrol`` audit record in one transaction

Every refusal after the token parses is audited (``enrol``, outcome ``PERMISSION_DENIED``),
as a record of its own; the identity of an enrolment's record is ``token:<token_id>``
(the bearer of the token: there is no certificate yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from outrider.certzones import validate_zones
from outrider.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from scheduler.core import audit
from scheduler.core.audit import Action
from scheduler.core.txn import Journal, Txn
from scheduler.store.base import TokenRow

__all__ = ["MAX_TOKENS", "MAX_TOKEN_LEN", "JoinTokens", "Token", "parse_token"]

#: A token string is at most this long (id 16 hex digits, a dot, secret 43 base64url characters).
MAX_TOKEN_LEN = 128
#: At most this many tokens on record (expired and used-up ones are dropped first to make room).
MAX_TOKENS = 10_000
MAX_USES = 100_000
MAX_TTL_S = 366 * 86400.0
DEFAULT_TTL_S = 3600.0
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
_TOKEN_RE = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
T = TypeVar("T")


@dataclass(frozen=True)
class Token:
    """A join token as the scheduler knows it (never its secret)."""

    token_id: str
    secret_hash: str
    created_at: float
    created_by: str
    expires_at: float
    uses_left: int
    labels: dict[str, str]
    zones: frozenset[str] | None

    def row(self) -> tuple[str, str, float, str, float, int, str, str]:
        zones = ",".join(sorted(self.zones)) if self.zones else ""
        labels = json.dumps(self.labels, sort_keys=True)
        return (self.token_id, self.secret_hash, self.created_at, self.created_by, self.expires_at, self.uses_left,
                labels, zones)  # fmt: skip

    @classmethod
    def of(cls, r: TokenRow) -> Token:
        zones = frozenset(z for z in r.zones.split(",") if z) or None
        return cls(r.token_id, r.secret_hash, r.created_at, r.created_by, r.expires_at, r.uses_left,
                   json.loads(r.labels or "{}"), zones)  # fmt: skip


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(text: str) -> tuple[str, str]:
    """(token id, secret) of ``<16 hex digits>.<43 base64url characters>``; PermissionDenied
    (bounded, never echoing the secret) for anything else."""
    if not isinstance(text, str) or len(text) > MAX_TOKEN_LEN:
        raise PermissionDenied(f"malformed join token: longer than {MAX_TOKEN_LEN} characters")
    m = _TOKEN_RE.fullmatch(text.strip())
    if m is None:
        raise PermissionDenied(
            "malformed join token: expected <16 hex digits>.<43 base64url characters>, as `outrider token create` "
            "prints it"
        )
    return m.group(1), m.group(2)


class JoinTokens:
    """The join tokens on record (memory mirrors the table; writes go through the journal)."""

    def __init__(self, journal: Journal, wall: Callable[[], float], caller: Callable[[], str]) -> None:
        self._journal, self._wall, self._caller = journal, wall, caller
        self.tokens: dict[str, Token] = {}
        self.restore(journal.store.join_tokens())  # what the table holds (a restart keeps every token)

    def restore(self, rows: Iterable[TokenRow]) -> None:
        self.tokens = {r.token_id: Token.of(r) for r in rows}

    def list(self) -> list[Token]:
        return sorted(self.tokens.values(), key=lambda t: (t.created_at, t.token_id))

    async def create(
        self, labels: dict[str, str], zones: Iterable[str] | None, ttl_s: float, uses: int
    ) -> tuple[str, Token]:
        """A new token: (the token string, shown once; what is kept). Audited ``token_create``."""
        if len(labels) > MAX_LABELS:  # checked in full by the API edge (scheduler.api.identity)
            raise InvalidArgument(f"labels: {len(labels)} labels, at most {MAX_LABELS}")
        zone_set = None if zones is None else validate_zones(zones, "token zones")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl must be more than 0 and at most 366 days, got {ttl_s:g}s")
        if not 0 < uses <= MAX_USES:
            raise InvalidArgument(f"uses must be from 1 to {MAX_USES}, got {uses}")
        txn = Txn()
        self._make_room(txn)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        while token_id in self.tokens:  # 64 random bits: a clash is all but impossible, and harmless so
            token_id = secrets.token_hex(8)
        now = self._wall()
        tok = Token(token_id, _hash(secret), now, self._caller(), now + ttl_s, uses, labels, zone_set)
        txn.changes.upsert_token(tok.row())
        detail = f"uses {uses}, expires {_iso(tok.expires_at)}, labels {_labels(labels)}, zones {_zones(zone_set)}"
        audit.record(txn, now, tok.created_by, Action.TOKEN_CREATE, token_id, detail=detail)
        self.tokens[token_id] = tok
        await self._journal.commit(txn)
        return f"{token_id}.{secret}", tok

    def _make_room(self, txn: Txn) -> None:
        if len(self.tokens) < MAX_TOKENS:
            return
        now = self._wall()
        dead = [t.token_id for t in self.tokens.values() if t.expires_at <= now or t.uses_left <= 0]
        if len(self.tokens) - len(dead) >= MAX_TOKENS:  # refused before anything changes
            raise ResourceExhausted(f"{MAX_TOKENS} join tokens are live; revoke some (`outrider token revoke`)")
        for token_id in dead:
            del self.tokens[token_id]
            txn.changes.delete_token(token_id)

    async def revoke(self, token_id: str) -> Token:
        """Withdraw a token (its row goes); audited ``token_revoke``."""
        tok = self.tokens.get(token_id)
        if tok is None:
            raise NotFound(f"no join token {token_id[:64]!r}")
        txn = Txn()
        del self.tokens[token_id]
        txn.changes.delete_token(token_id)
        audit.record(
            txn, self._wall(), self._caller(), Action.TOKEN_REVOKE, token_id, detail=f"{tok.uses_left} uses left"
        )
        await self._journal.commit(txn)
        return tok

    async def enrol(
        self, token: str, name: str, admit: Callable[[str], str | None], sign: Callable[[Token], Awaitable[T]]
    ) -> tuple[Token, T]:
        """Spend one use of ``token`` on enrolling ``name`` (see the module docstring).

        ``admit(name)`` says why the name may not enrol (revoked, a live agent), or None;
        ``sign(token)`` makes the certificate. The use is spent and the enrolment audited in
        one transaction, after signing: a refusal or a failure spends nothing.
        """
        try:
            token_id, secret = parse_token(token)
        except PermissionDenied as exc:
            self._refused("?", name, str(exc))
            raise
        tok = self.tokens.get(token_id)
        if tok is None or not hmac.compare_digest(tok.secret_hash, _hash(secret)):
            self._refused(token_id, name, "invalid join token (unknown id or wrong secret)")
            raise PermissionDenied("invalid join token")
        now = self._wall()
        why = None
        if tok.expires_at <= now:
            why = f"join token {token_id} expired at {_iso(tok.expires_at)}"
        elif tok.uses_left <= 0:
            why = f"join token {token_id} is used up"
        else:
            refusal = admit(name)
            if refusal is not None:
                why = f"agent name {name!r} may not enrol: {refusal}"
        if why is not None:
            self._refused(token_id, name, why)
            raise PermissionDenied(why)
        result = await sign(tok)
        tok = self.tokens.get(token_id)
        if tok is None or tok.uses_left <= 0:  # spent or revoked while the certificate was being signed
            why = f"join token {token_id} was used up or revoked meanwhile"
            self._refused(token_id, name, why)
            raise PermissionDenied(why)
        tok = dataclasses.replace(tok, uses_left=tok.uses_left - 1)
        self.tokens[token_id] = tok
        txn = Txn()
        txn.changes.token_uses(token_id, tok.uses_left)
        detail = f"{tok.uses_left} uses left; labels {_labels(tok.labels)}, zones {_zones(tok.zones)}"
        audit.record(txn, self._wall(), f"token:{token_id}", Action.ENROL, name, detail=detail)
        await self._journal.commit(txn)
        return tok, result

    def _refused(self, token_id: str, name: str, why: str) -> None:
        txn = Txn()
        audit.record(txn, self._wall(), f"token:{token_id}", Action.ENROL, name[:256], "PERMISSION_DENIED", why)
        self._journal.commit(txn)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def _zones(zones: frozenset[str] | None) -> str:
    return ",".join(sorted(zones)) if zones else "none"
