"""Opening the hub's database: one SQLAlchemy Core code path for SQLite and PostgreSQL.

Durable means committed to disk before a receipt goes out. On SQLite that is WAL with
synchronous=FULL, set on every connection here. On PostgreSQL it depends on the server's
settings, so every new connection checks them and the hub refuses to run on a server that
would acknowledge a commit it could lose.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


class StoreError(Exception):
    """The database is not usable for this hub (wrong chain, damaged, unreachable, not durable)."""


# PostgreSQL settings that must not be off: with either off, a committed batch can be lost
# in a crash after its receipt went out.
_PG_DURABILITY_SETTINGS = ("fsync", "synchronous_commit")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def engine_for(url: str) -> Engine:
    """An engine for `url` (sqlite:///… or postgresql+psycopg://…) that only hands out durable connections."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise StoreError(
            f"database URL {parsed.render_as_string(hide_password=True)}: use the psycopg driver "
            "(postgresql+psycopg://user@host/db)"
        )
    connect_args = {"application_name": "gridtrace-hub"} if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _check_pg_durability)
    else:
        raise StoreError(f"database URL {url!r}: only SQLite and PostgreSQL are supported")
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    # Batch payloads are blobs of hundreds of kB: bigger pages mean shorter overflow chains. Only
    # takes effect while the file is still empty (before WAL mode and the first table).
    cur.execute("PRAGMA page_size=16384")
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: receipts are sent after commit, so commit must mean "on disk".
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _check_pg_durability(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    try:
        for setting in _PG_DURABILITY_SETTINGS:
            cur.execute(f"SHOW {setting}")
            value = cur.fetchone()[0]
            if value == "off":
                raise StoreError(
                    f"PostgreSQL has {setting} = off, so a commit the hub acknowledges with a receipt "
                    f"could be lost in a crash; set {setting} = on (postgresql.conf, or ALTER DATABASE/ROLE "
                    "... SET) and restart the hub"
                )
    finally:
        cur.close()
    # psycopg starts a transaction on the first statement; leave the connection clean.
    dbapi_conn.rollback()
