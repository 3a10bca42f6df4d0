"""The clerks' queries use their indexes on a large database, on SQLite and PostgreSQL.

A database is filled in place (recursive CTE on SQLite, generate_series on PostgreSQL) with a
million meter spans (500 meters x 2,000 hours), 100,000 batches in 10,000 sealed blocks and their
payloads. The statements the Store really runs for each clerk query are captured as it runs
them, and each one's plan must search an index: no full scan of a large table. No timing is
asserted here; bench/ measures speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, text

from hub.storage.payload import PayloadError
from hub.storage.schema import HOUR_NS
from hub.storage.store import Store

METERS = 500
HOURS = 2_000
SPANS = METERS * HOURS  # one million
BATCHES = 100_000
PER_BLOCK = 10
H0 = 490_000  # hours since the epoch: 2025-11-23
LARGE = {"entry_spans", "batches", "batch_payloads", "blocks", "seals", "meters"}

_SQLITE_FILL = [
    f"""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {METERS})
        INSERT INTO meters (meter_key, meter_id) SELECT i, 'M-' || i FROM k""",
    f"""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {BATCHES // PER_BLOCK})
        INSERT INTO blocks SELECT i, randomblob(32), x'00', i, {PER_BLOCK}, {PER_BLOCK}, i * {PER_BLOCK} FROM k""",
    f"""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {BATCHES // PER_BLOCK})
        INSERT INTO seals SELECT i, 'hub-a', zeroblob(64) FROM k""",
    f"""WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < {BATCHES - 1})
        INSERT INTO batches (id, gateway_id, seq, hash, header, signature, entry_count, stored_ns,
                             block_height, block_index, log_index)
        SELECT i + 1, 'gw-' || (i % 50), i / 50 + 1, randomblob(32), x'00', zeroblob(64), 1, i,
               i / {PER_BLOCK} + 1, i % {PER_BLOCK}, i FROM k""",
    f"""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {BATCHES})
        INSERT INTO batch_payloads SELECT i, x'', x'00000000', x'0000' FROM k""",
    # Spans arrive hour by hour, all meters each hour, as ingest writes them.
    f"""WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < {SPANS - 1})
        INSERT INTO entry_spans SELECT i % {METERS} + 1, {H0} + i / {METERS}, i / {METERS} + 1,
               ({H0} + i / {METERS}) * {HOUR_NS}, ({H0} + i / {METERS}) * {HOUR_NS} + 1, 1, x'00000000' FROM k""",
    "ANALYZE",
]

_PG_FILL = [
    f"INSERT INTO meters (meter_key, meter_id) SELECT i, 'M-' || i FROM generate_series(1, {METERS}) i",
    f"""INSERT INTO blocks SELECT i, decode(lpad(to_hex(i), 64, '0'), 'hex'), '\\x00', i, {PER_BLOCK}, {PER_BLOCK},
               i * {PER_BLOCK} FROM generate_series(1, {BATCHES // PER_BLOCK}) i""",
    f"""INSERT INTO seals SELECT i, 'hub-a', decode(repeat('00', 64), 'hex')
        FROM generate_series(1, {BATCHES // PER_BLOCK}) i""",
    f"""INSERT INTO batches (id, gateway_id, seq, hash, header, signature, entry_count, stored_ns,
                             block_height, block_index, log_index)
        SELECT i + 1, 'gw-' || (i % 50), i / 50 + 1, decode(lpad(to_hex(i + 1), 64, '0'), 'hex'), '\\x00',
               decode(repeat('00', 64), 'hex'), 1, i, i / {PER_BLOCK} + 1, i % {PER_BLOCK}, i
        FROM generate_series(0, {BATCHES - 1}) i""",
    f"INSERT INTO batch_payloads SELECT i, '\\x', '\\x00000000', '\\x0000' FROM generate_series(1, {BATCHES}) i",
    f"""INSERT INTO entry_spans SELECT i % {METERS} + 1, {H0} + i / {METERS}, i / {METERS} + 1,
               ({H0}::bigint + i / {METERS}) * {HOUR_NS}, ({H0}::bigint + i / {METERS}) * {HOUR_NS} + 1, 1,
               '\\x00000000'
        FROM generate_series(0, {SPANS - 1}) i""",
    "ANALYZE",
]


@pytest.fixture(scope="module")
def big_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One large database per backend for the module (filling it is the slow part)."""
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'hub.sqlite'}"
    else:
        server = request.getfixturevalue("postgres_server")
        name = server.new_database()
        url = server.url(name)
    store = Store(url)
    store.create("plans")
    with store.engine.begin() as c:
        for sql in _SQLITE_FILL if backend == "sqlite" else _PG_FILL:
            c.execute(text(sql))
    yield store
    store.close()
    if backend == "postgresql":
        server.drop_database(name)


pytestmark = pytest.mark.parametrize("big_store", ["sqlite", "postgresql"], indirect=True)


def _captured(store: Store, query: Callable[[], object]) -> list[tuple[str, object]]:
    statements: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        query()
    except PayloadError:
        pass  # the generated payloads are empty; the statements are what is checked here
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert statements, "the query ran no SQL"
    return statements


def _sqlite_plan(store: Store, sql: str, params) -> list[str]:  # noqa: ANN001
    with store.engine.connect() as c:
        return [r[3] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]


def _pg_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _pg_nodes(child)


def _pg_plan(store: Store, sql: str, params) -> list[str]:  # noqa: ANN001
    with store.engine.connect() as c:
        raw = c.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return [
        " ".join(str(n.get(k, "")) for k in ("Node Type", "Relation Name", "Index Name")).strip()
        for n in _pg_nodes(doc[0]["Plan"])
    ]


def plans(store: Store, query: Callable[[], object]) -> list[list[str]]:
    explain = _pg_plan if store.engine.dialect.name == "postgresql" else _sqlite_plan
    return [explain(store, sql, params) for sql, params in _captured(store, query)]


def assert_no_full_scan(all_plans: list[list[str]]) -> None:
    for plan in all_plans:
        for step in plan:
            words = step.split()
            # SQLite: "SCAN batches"; PostgreSQL: "Seq Scan batches".
            if step.startswith("SCAN ") and words[1] in LARGE:
                pytest.fail(f"full scan: {step} in {plan}")
            if step.startswith("Seq Scan") and words[2] in LARGE:
                pytest.fail(f"full scan: {step} in {plan}")


def uses(all_plans: list[list[str]], sqlite_step: str, pg_index: str, dialect: str) -> bool:
    wanted = sqlite_step if dialect == "sqlite" else pg_index
    return any(wanted in step for plan in all_plans for step in plan)


def test_a_meters_month_searches_the_span_key(big_store: Store) -> None:
    from_ns = (H0 + 300) * HOUR_NS
    to_ns = from_ns + 30 * 24 * HOUR_NS
    got = plans(big_store, lambda: big_store.meter_entries("M-7", from_ns, to_ns))
    assert_no_full_scan(got)
    dialect = big_store.engine.dialect.name
    assert uses(got, "SEARCH entry_spans USING PRIMARY KEY (meter_key=? AND hour>? AND hour<?)",
                "entry_spans_pkey", dialect), got
    assert uses(got, "SEARCH meters USING", "meters_meter_id_key", dialect), got
    assert uses(got, "SEARCH batch_payloads USING", "batch_payloads_pkey", dialect), got


def test_a_block_by_height_searches_its_keys(big_store: Store) -> None:
    got = plans(big_store, lambda: (big_store.block(517), big_store.block_batch_hashes(517)))
    assert_no_full_scan(got)
    dialect = big_store.engine.dialect.name
    assert uses(got, "SEARCH batches USING INDEX batches_by_block (block_height=?)", "batches_by_block", dialect), got
    assert uses(got, "SEARCH blocks USING", "blocks_pkey", dialect), got
    assert uses(got, "SEARCH seals USING", "seals_pkey", dialect), got


def test_a_certificates_batches_and_status_search_their_keys(big_store: Store) -> None:
    got = plans(big_store, lambda: (
        big_store.batch_by_id(73_001), big_store.batch_bodies(73_001), big_store.find_batch("gw-7", 99),
        big_store.counts(), big_store.gateway_heads(), big_store.head(),
    ))
    assert_no_full_scan(got)
    dialect = big_store.engine.dialect.name
    assert uses(got, "SEARCH batches USING INTEGER PRIMARY KEY", "batches_pkey", dialect), got
    assert uses(got, "SEARCH batches USING INDEX sqlite_autoindex_batches", "batches_gateway_seq", dialect) or uses(
        got, "batches_gateway_seq", "batches_gateway_seq", dialect), got
