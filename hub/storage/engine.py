"""Opening the hub's database: one SQLAlchemy Core code path for SQLite and PostgreSQL.

Durable means committed to disk before a receipt goes out. On SQLite that is WAL with
synchronous=FULL, set on every connection here. On PostgreSQL it depends on the server's
settings, so every new connection checks them and the hub refuses to run on a server that
would acknowledge a commit it could lose.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
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


log = logging.getLogger("gridtrace.hub.storage")


def engine_for(url: str, autocheckpoint: bool = True) -> Engine:
    """An engine for `url` (sqlite:///… or postgresql+psycopg://…) that only hands out durable connections.

    `autocheckpoint=False` (SQLite): commits never copy the WAL back into the database file;
    a `Checkpointer` thread must do it instead.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise StoreError(
            f"database URL {parsed.render_as_string(hide_password=True)}: use the psycopg driver "
            "(postgresql+psycopg://user@host/db)"
        )
    connect_args = {"application_name": "gridtrace-hub"} if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", partial(_sqlite_pragmas, autocheckpoint=autocheckpoint))
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _check_pg_durability)
    else:
        raise StoreError(f"database URL {url!r}: only SQLite and PostgreSQL are supported")
    return engine


def _sqlite_pragmas(dbapi_conn, _record, autocheckpoint: bool = True) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    # Batch payloads are blobs of hundreds of kB: bigger pages mean shorter overflow chains. Only
    # takes effect while the file is still empty (before WAL mode and the first table).
    cur.execute("PRAGMA page_size=16384")
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: receipts are sent after commit, so commit must mean "on disk".
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    if not autocheckpoint:
        cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


class Checkpointer:
    """Copies a SQLite WAL back into the database file on a thread and connection of its own.

    With SQLite's default, the commit that takes the WAL past 1,000 pages also runs the
    checkpoint (copy and fsync of the database file) before it returns, so that commit's
    receipts wait for it and the writer stalls. Here the writer's connections have
    `wal_autocheckpoint=0` and this thread runs PASSIVE checkpoints every `interval_s`,
    which never block the writer nor readers. Under steady load the writer appends while a
    PASSIVE checkpoint copies, so the WAL would never be all copied at once and would grow
    without end; once it holds `restart_frames` frames, a RESTART checkpoint copies the
    rest (little, after the PASSIVE one) while holding new commits back, and the next
    commit starts the WAL over. Durability does not change: a commit is durable when its WAL
    frames are fsync'd, which synchronous=FULL does in the commit itself.
    """

    def __init__(self, engine: Engine, interval_s: float = 0.5, restart_frames: int = 2048) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = self.engine.raw_connection()
            # A RESTART checkpoint holds new commits back while it waits for readers: give up
            # after 100 ms (and try again next round) rather than stall receipts behind a long read.
            conn.cursor().execute("PRAGMA busy_timeout=100")
        except Exception:  # noqa: BLE001
            log.exception("SQLite WAL checkpointer could not connect; the WAL is not checkpointed until restart")
            return
        try:
            while not self._stop.wait(self.interval_s):
                frames = self._checkpoint(conn, "PASSIVE")
                if frames >= self.restart_frames:
                    self._checkpoint(conn, "RESTART")
            self._checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    def _checkpoint(self, conn, mode: str) -> int:  # noqa: ANN001
        """Run one checkpoint; return the frames in the WAL (0 after a failure)."""
        try:
            cur = conn.cursor()
            cur.execute(f"PRAGMA wal_checkpoint({mode})")
            _busy, frames, _copied = cur.fetchone()
            cur.close()
            conn.commit()
            self.checkpoints += 1
            return frames
        except Exception:  # noqa: BLE001 - the next round tries again; the WAL only grows meanwhile
            log.exception("SQLite WAL checkpoint (%s) failed; retrying in %.1f s", mode, self.interval_s)
            return 0

    def stop(self) -> None:
        """A last checkpoint that also truncates the WAL, then the thread ends."""
        self._stop.set()
        self._thread.join(timeout=30)


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
