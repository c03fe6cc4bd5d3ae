"""Fixtures shared by unit and integration tests: the store backends.

``backend`` runs a test once on SQLite and once on PostgreSQL. The PostgreSQL server is
one per session (started on first use, stopped and removed at the end even after a
failure); each test gets a fresh database. Where no server can be started the
PostgreSQL half is skipped, naming why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.backends import Backend, PostgresBackend, SqliteBackend
from tests.helpers.pgserver import PgServer, skip_reason

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    why = skip_reason()
    if why is not None:
        pytest.skip(why)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_backend(pg_server: PgServer) -> PostgresBackend:
    return PostgresBackend(pg_server, pg_server.database())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "s.db")
    return request.getfixturevalue("pg_backend")
