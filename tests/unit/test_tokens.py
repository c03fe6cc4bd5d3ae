"""scheduler.core.tokens against a real SQLite store: what is kept (only a hash), what enrolment
spends and refuses, what survives a restart, and what is audited."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from outrider.errors import InvalidArgument, PermissionDenied
from scheduler.core.tokens import JoinTokens, Token
from scheduler.core.txn import Journal
from scheduler.store.base import Store
from tests.helpers.backends import Backend

ADMIN = "spiffe://acme.test/admin/root"


class World:
    def __init__(self, db: Backend) -> None:
        self.db = db
        self.loop = asyncio.new_event_loop()
        self.now = 1_000_000.0
        self.store: Store | None = None
        self.tokens = self.open()

    def open(self) -> JoinTokens:
        if self.store is not None:
            self.store.close()
        self.store = self.db.open()
        self.store.start(self.loop)
        return JoinTokens(Journal(self.store), lambda: self.now, lambda: ADMIN)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

    def enrol(self, token: str, name: str, admit: Any = lambda n: None) -> tuple[Token, str]:
        async def sign(tok: Token) -> str:
            return f"cert for {name}"

        return self.run(self.tokens.enrol(token, name, admit, sign))  # type: ignore[no-any-return]

    def audit(self) -> list[tuple[str, str, str, str, str]]:
        assert self.store is not None
        self.run(self.store.barrier())
        return [(r.identity, r.action, r.target, r.outcome, r.detail) for r in self.store.audit_rows()]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.loop.close()


@pytest.fixture
def w(backend: Backend) -> Iterator[World]:
    """Join tokens on a store of each backend (tokens are durable state)."""
    world = World(backend)
    try:
        yield world
    finally:
        world.close()


def test_only_a_hash_of_the_secret_is_kept_and_uses_are_spent_durably(w: World) -> None:
    token, tok = w.run(w.tokens.create({"site": "lab"}, ["eu"], 600, 2))
    token_id, _, secret = token.partition(".")
    assert tok.token_id == token_id and tok.uses_left == 2 and tok.zones == frozenset({"eu"})
    w.run(w.store.barrier())  # type: ignore[union-attr]
    rows = w.db.read("SELECT * FROM join_tokens")
    assert len(rows) == 1 and secret not in repr(rows)
    assert hashlib.sha256(secret.encode()).hexdigest() in repr(rows)
    spent, cert = w.enrol(token, "edge-1")
    assert cert == "cert for edge-1" and spent.uses_left == 1
    w.tokens = w.open()  # a restart: the use stays spent
    assert w.tokens.tokens[token_id].uses_left == 1 and w.tokens.tokens[token_id].labels == {"site": "lab"}
    w.enrol(token, "edge-2")
    with pytest.raises(PermissionDenied, match="used up"):
        w.enrol(token, "edge-3")
    records = w.audit()
    assert records[0][:3] == (ADMIN, "token_create", token_id)
    assert [(r[1], r[2], r[3]) for r in records[1:]] == [
        ("enrol", "edge-1", "ok"), ("enrol", "edge-2", "ok"), ("enrol", "edge-3", "PERMISSION_DENIED")]
    assert all(r[0] == f"token:{token_id}" for r in records[1:])


def test_refusals_spend_nothing_and_say_why(w: World) -> None:
    token, tok = w.run(w.tokens.create({}, None, 60, 1))
    with pytest.raises(PermissionDenied, match=r"^invalid join token$"):
        w.enrol(tok.token_id + "." + "x" * 43, "edge-1")  # wrong secret
    with pytest.raises(PermissionDenied, match=r"^invalid join token$"):
        w.enrol("f" * 16 + "." + token.partition(".")[2], "edge-1")  # unknown id, right-looking secret
    with pytest.raises(PermissionDenied, match="it is revoked"):
        w.enrol(token, "edge-1", admit=lambda n: "it is revoked")
    assert w.tokens.tokens[tok.token_id].uses_left == 1
    w.now += 61
    with pytest.raises(PermissionDenied, match="expired at"):
        w.enrol(token, "edge-1")
    assert [r[3] for r in w.audit()[1:]] == ["PERMISSION_DENIED"] * 4


def test_bad_tokens_requests_are_refused(w: World) -> None:
    for labels, zones, ttl, uses, words in [({}, ["bad zone"], 60, 1, "zone"), ({}, None, 0, 1, "ttl"),
                                           ({}, None, 400 * 86400, 1, "ttl"), ({}, None, 60, 0, "uses"),
                                           ({f"k{i}": "v" for i in range(65)}, None, 60, 1, "labels")]:
        with pytest.raises(InvalidArgument, match=words):
            w.run(w.tokens.create(labels, zones, ttl, uses))
    assert w.tokens.list() == []


def test_revoke_removes_the_token(w: World) -> None:
    token, tok = w.run(w.tokens.create({}, None, 60, 5))
    assert w.run(w.tokens.revoke(tok.token_id)).uses_left == 5
    with pytest.raises(PermissionDenied, match="invalid join token"):
        w.enrol(token, "edge-1")
    w.tokens = w.open()
    assert w.tokens.list() == []
    assert ("token_revoke", tok.token_id) in [(r[1], r[2]) for r in w.audit()]
