"""Which store backend the ``database`` setting names, and opening it.

* empty: SQLite at ``STATE_DIR/outrider.db`` (the default, and what ``make demo`` uses);
* ``sqlite:///ABSOLUTE/PATH`` or a bare path (relative to the config file, or for a flag to the
  working directory): SQLite there;
* ``postgresql://…`` or ``postgres://…``: PostgreSQL, a libpq URI. No password in it: the
  password comes from ``database_password_file``, ``PGPASSWORD``, ``PGPASSFILE`` or ``~/.pgpass``
  (libpq's own rules); ``sslmode=verify-full&sslrootcert=…`` and the other libpq parameters pass
  through as they are.

The backend modules are imported only when chosen: a SQLite scheduler never loads psycopg.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from outrider.errors import ConfigError
from scheduler.store.base import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"
DEFAULT_SQLITE_NAME = "outrider.db"


def is_postgres(database: str) -> bool:
    return database.startswith(POSTGRES_SCHEMES)


def normalise(database: str, base: str, source: str) -> str:
    """The setting as the scheduler keeps it: empty, an absolute SQLite path, or a PostgreSQL
    URI (checked: parsable, no inline password). ConfigError naming what is wrong."""
    if not isinstance(database, str):
        raise ConfigError(f"{source}: database must be a string (a path, sqlite:///PATH or postgresql://…)")
    if not database:
        return ""
    if is_postgres(database):
        from scheduler.store.postgres import check_uri

        try:
            check_uri(database)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return database
    if database.startswith(SQLITE_SCHEME):
        path = database[len(SQLITE_SCHEME) :]
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"{source}: database: sqlite:// takes an absolute path, like sqlite:///var/lib/x.db")
        return os.path.abspath(path)
    if "://" in database:
        scheme = database.split("://", 1)[0]
        raise ConfigError(
            f"{source}: database: unknown scheme {scheme!r}; use a path, sqlite:///PATH or postgresql://HOST/DB"
        )
    return os.path.abspath(os.path.join(base, os.path.expanduser(database)))


def read_password_file(path: str) -> str:
    """The first line of ``path``; ConfigError if it cannot be read, is empty, or others may read it."""
    try:
        st = os.stat(path)
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"database_password_file {path}: cannot read it ({exc.__class__.__name__})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"database_password_file {path}: group or others may read it (mode {stat.S_IMODE(st.st_mode):o}); "
            f"chmod 600 it"
        )
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"database_password_file {path}: it is empty; its first line is the password")
    return password


def open_store(database: str, password_file: str, state_dir: Path) -> Store:
    """The store the (normalised) ``database`` setting names, opened and migrated."""
    if is_postgres(database):
        from scheduler.store.postgres import PostgresStore

        password = read_password_file(password_file) if password_file else None
        return PostgresStore(database, password=password)
    if password_file:
        raise ConfigError("database_password_file is for a PostgreSQL database; this database is SQLite")
    from scheduler.store.sqlite import SqliteStore

    return SqliteStore(database or state_dir / DEFAULT_SQLITE_NAME)
