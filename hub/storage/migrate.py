"""Bringing a hub database to the schema this code needs (Alembic, run from the installed package).

The migration scripts live in hub/storage/migrations and are found as a package resource, so
`gridtrace hub migrate` works from an installed wheel in any directory; there is no alembic.ini.

A database made by gridtrace 0.1.0 has the tables but no `alembic_version`; it is compared with
the frozen 0.1.0 schema and, only if it matches exactly, recorded as being at revision 0001.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

# Set before alembic is imported: it announces each of its autogenerate plugins at INFO while it
# is imported (seven lines of noise in every hub command's log, before `hub serve` has set up
# JSON logging).
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
# Every migration context Alembic opens (each schema check: every hub command that opens the
# database) logs "Context impl SQLiteImpl." and "Will assume non-transactional DDL." at INFO.
# Quiet unless the operator asked for a migration: see `reporting_steps`.
_migration_log = logging.getLogger("alembic.runtime.migration")
_migration_log.setLevel(logging.WARNING)

from alembic import command  # noqa: E402 - after the logger levels above
from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from alembic.script.revision import ResolutionError  # noqa: E402
from alembic.util import CommandError  # noqa: E402
from sqlalchemy import Connection, Engine, inspect  # noqa: E402

from hub.storage.engine import StoreError  # noqa: E402
from hub.storage.migrations import schema_0_1  # noqa: E402

SCRIPT_LOCATION = "hub.storage:migrations"
FIRST_REVISION = "0001"


@dataclass(frozen=True)
class MigrationStatus:
    current: str | None  # None: an empty database
    head: str
    pending: tuple[str, ...]  # revisions an upgrade would apply, oldest first

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _only_steps(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith("Running ")


@contextlib.contextmanager
def reporting_steps() -> Iterator[None]:
    """Let Alembic log each migration step it runs ("Running upgrade 0001 -> 0002, ...") at
    INFO, without its per-connection chatter: for `gridtrace hub migrate`."""
    level = _migration_log.level
    _migration_log.setLevel(logging.INFO)
    _migration_log.addFilter(_only_steps)
    try:
        yield
    finally:
        _migration_log.removeFilter(_only_steps)
        _migration_log.setLevel(level)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package holds no migrations"
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _is_unversioned_0_1(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return "alembic_version" not in tables and bool(tables & set(schema_0_1.metadata.tables))


def adopt_unversioned(connection: Connection, where: str) -> bool:
    """Stamp a database that 0.1.0 created as revision 0001; False if there was nothing to adopt."""
    if not _is_unversioned_0_1(connection):
        return False
    diffs = compare_metadata(MigrationContext.configure(connection), schema_0_1.metadata)
    if diffs:
        shown = "; ".join(str(d) for d in diffs[:5])
        raise StoreError(
            f"database {where} has hub tables but no schema version, and they differ from gridtrace "
            f"0.1.0's ({len(diffs)} differences: {shown}); refusing to migrate it. Restore it from a "
            "backup or migrate it by hand"
        )
    command.stamp(alembic_config(connection), FIRST_REVISION)
    return True


def status(engine: Engine) -> MigrationStatus:
    head = head_revision()
    with engine.connect() as conn:
        current = FIRST_REVISION if _is_unversioned_0_1(conn) else _current(conn)
    script = ScriptDirectory.from_config(alembic_config())
    if current == head or (current is not None and _unknown(script, current)):
        return MigrationStatus(current, head, ())
    pending = tuple(reversed([r.revision for r in script.iterate_revisions(head, current or "base")]))
    return MigrationStatus(current, head, pending)


def _unknown(script: ScriptDirectory, revision: str) -> bool:
    try:
        script.get_revision(revision)
    except (ResolutionError, CommandError):
        return True
    return False


@contextlib.contextmanager
def _all_or_nothing(engine: Engine) -> Iterator[Connection]:
    """One transaction that covers DDL too, so a failed migration leaves the database as it was.

    PostgreSQL's DDL is transactional as it is. Python's sqlite3 module (3.11) commits nothing
    on its own but opens its transaction only at the first INSERT/UPDATE/DELETE, so the CREATE
    and DROP before it would stay; here the transaction is opened explicitly instead.
    """
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            saved = driver.isolation_level
            driver.isolation_level = None
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if sqlite:
                driver.isolation_level = saved


def upgrade(engine: Engine, target: str = "head") -> MigrationStatus:
    """Migrate the database to `target` in one transaction (adopting a 0.1.0 database first)."""
    where = engine.url.render_as_string(hide_password=True)
    with _all_or_nothing(engine) as conn:
        adopt_unversioned(conn, where)
        command.upgrade(alembic_config(conn), target)
    return status(engine)


def downgrade(engine: Engine, target: str) -> MigrationStatus:
    with _all_or_nothing(engine) as conn:
        command.downgrade(alembic_config(conn), target)
    return status(engine)


def require_head(engine: Engine, config_hint: str = "hub.toml") -> None:
    """Raise StoreError unless the database is exactly at the revision this code needs."""
    st = status(engine)
    if st.at_head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if st.current is None:
        raise StoreError(f"database {where} has no hub schema; run `gridtrace hub init` or "
                         f"`gridtrace hub migrate --config {config_hint}`")
    if st.pending:
        raise StoreError(
            f"database {where} is at schema revision {st.current}; this hub needs {st.head}: "
            f"run `gridtrace hub migrate --config {config_hint}` (back the database up first)"
        )
    raise StoreError(
        f"database {where} is at schema revision {st.current}, which this gridtrace does not know "
        f"(it needs {st.head}); it was migrated by a newer gridtrace: run that version"
    )
