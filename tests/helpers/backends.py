"""The store backends the store and engine tests run against, behind one small interface.

A test asks for the ``backend`` fixture (tests/conftest.py), parametrised over SQLite (a file
in tmp_path) and PostgreSQL (a fresh database on the session's server, tests/helpers/pgserver.py).
``open()`` builds a new store on the same database (a restart), ``read()`` reads through a
connection of its own, which sees only what was committed. SQL given to ``read`` uses ``?``
placeholders and portable SQL; a PostgreSQL backend turns ``?`` into ``%s``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from scheduler.store.base import Store
from tests.helpers.pgserver import PgServer


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def database(self) -> str:
        """The scheduler's ``--database`` value for it."""
        return str(self.path)

    def open(self) -> Store:
        from scheduler.store.sqlite import SqliteStore

        return SqliteStore(self.path)

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """A write of the test's own, committed (tampering with a record, say)."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()


class PostgresBackend:
    name = "postgresql"

    def __init__(self, server: PgServer, dbname: str) -> None:
        self.server = server
        self.dbname = dbname
        self.uri = server.uri(dbname)

    @property
    def database(self) -> str:
        return self.uri

    def open(self) -> Store:
        from scheduler.store.postgres import PostgresStore

        return PostgresStore(self.uri, password=self.server.password)

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.uri, password=self.server.password, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s").encode(), params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        import psycopg

        with psycopg.connect(self.uri, password=self.server.password, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s").encode(), params)


Backend = SqliteBackend | PostgresBackend
