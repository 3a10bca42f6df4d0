"""Schema migrations (Alembic, shipped in the package) on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from gridtrace.cli import main as gridtrace_main
from hub.storage import migrate
from hub.storage.engine import StoreError, engine_for
from hub.storage.migrations import schema_0_1
from hub.storage.schema import metadata
from hub.storage.store import Store
from protos.merkle import CompactRange

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def engine(database_url: str):  # noqa: ANN201
    e = engine_for(database_url)
    yield e
    e.dispose()


def schema_differences(engine) -> list:  # noqa: ANN001
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), metadata)


def test_empty_database_to_head_matches_the_schema(engine) -> None:  # noqa: ANN001
    st = migrate.status(engine)
    assert st.current is None and not st.at_head and st.pending[-1] == st.head
    after = migrate.upgrade(engine)
    assert after.at_head and after.current == migrate.head_revision()
    assert schema_differences(engine) == []
    # Upgrading again changes nothing.
    assert migrate.upgrade(engine) == after


def test_downgrade_to_nothing_and_up_again(engine) -> None:  # noqa: ANN001
    migrate.upgrade(engine)
    st = migrate.downgrade(engine, "base")
    assert st.current is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert schema_differences(engine) == []


def _old_database(engine) -> None:  # noqa: ANN001
    """What gridtrace 0.1.0's `hub init` left: create_all of its tables and the chain row."""
    schema_0_1.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(
            schema_0_1.metadata.tables["chain_state"].insert().values(
                id=1, chain_id="old-chain", log_frontier=json.dumps(CompactRange().to_json())
            )
        )


def test_a_0_1_database_is_adopted_and_keeps_its_chain(engine, database_url: str) -> None:  # noqa: ANN001
    _old_database(engine)
    assert "alembic_version" not in inspect(engine).get_table_names()
    st = migrate.upgrade(engine)
    assert st.at_head and schema_differences(engine) == []
    store = Store(database_url)
    try:
        store.open_existing("old-chain")
    finally:
        store.close()


def test_a_changed_unversioned_database_is_refused(engine) -> None:  # noqa: ANN001
    _old_database(engine)
    with engine.begin() as c:
        c.execute(text("DROP INDEX entries_meter_time"))
    with pytest.raises(StoreError, match="differ from gridtrace 0.1.0's .*entries_meter_time"):
        migrate.upgrade(engine)
    assert "alembic_version" not in inspect(engine).get_table_names()


def test_a_database_from_a_newer_gridtrace_is_refused(engine) -> None:  # noqa: ANN001
    migrate.upgrade(engine)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="revision 9999, which this gridtrace does not know"):
        migrate.require_head(engine)


def _set_database(cfg_path: Path, url: str) -> None:
    text_ = cfg_path.read_text()
    cfg_path.write_text(text_.replace('database = "hub.sqlite"', f"database = {json.dumps(url)}"))


def test_cli_init_migrate_status_and_serve_refusal(database_url: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    hub_dir = tmp_path / "hub"
    assert gridtrace_main(["hub", "init", "--dir", str(hub_dir), "--chain-id", "c-1", "--insecure",
                           "--database", database_url]) == 0
    cfg = str(hub_dir / "hub.toml")
    assert gridtrace_main(["hub", "migrate", "--config", cfg, "--status"]) == 0
    assert f"head {migrate.head_revision()}, pending: none" in capsys.readouterr().out

    engine = engine_for(database_url)
    migrate.downgrade(engine, "base")
    engine.dispose()
    assert gridtrace_main(["hub", "migrate", "--config", cfg, "--status"]) == 1
    assert "revision none (empty)" in capsys.readouterr().out
    assert gridtrace_main(["hub", "serve", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert f"gridtrace hub migrate --config {cfg}" in err
    assert gridtrace_main(["hub", "trust", "--config", cfg, "-o", str(tmp_path / "trust.json")]) != 0
    assert f"gridtrace hub migrate --config {cfg}" in capsys.readouterr().err
    assert not (tmp_path / "trust.json").exists()

    assert gridtrace_main(["hub", "migrate", "--config", cfg]) == 0
    assert f"migrated from empty to {migrate.head_revision()}" in capsys.readouterr().out
    assert gridtrace_main(["hub", "migrate", "--config", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out


async def _serve_once(cfg) -> int:  # noqa: ANN001
    """serve() with its stop already set: returns 0 if it started (and at once stopped) instead of refusing."""
    from hub.server import serve

    stop = asyncio.Event()
    stop.set()
    return await serve(cfg, stop)


def test_serve_itself_refuses_a_database_behind_the_schema_head(database_url: str, tmp_path: Path) -> None:
    """`hub.server.serve` (not only the `hub serve` command) checks the schema revision before
    it binds a port, and tells the operator the command that fixes it."""
    from hubharness import RunningHub, init_hub

    cfg = init_hub(tmp_path / "hub", database_url=database_url)
    engine = engine_for(database_url)
    behind = migrate.downgrade(engine, "-1")
    assert behind.pending and not behind.at_head
    with pytest.raises(StoreError) as info:
        asyncio.run(_serve_once(cfg))
    assert f"at schema revision {behind.current}; this hub needs {behind.head}" in str(info.value)
    assert f"run `gridtrace hub migrate --config {cfg.path}`" in str(info.value)
    assert migrate.status(engine) == behind  # refused without touching the database
    engine.dispose()
    # once migrated, the same config serves
    assert gridtrace_main(["hub", "migrate", "--config", str(cfg.path)]) == 0
    with RunningHub(cfg):
        pass


def test_serve_refuses_a_database_of_another_chain(tmp_path: Path) -> None:
    from hubharness import init_hub

    cfg = init_hub(tmp_path / "hub", chain_id="chain-a")
    text_ = cfg.path.read_text().replace('chain_id = "chain-a"', 'chain_id = "chain-b"')
    assert text_ != cfg.path.read_text()
    cfg.path.write_text(text_)
    from hub.config import load_hub_config

    with pytest.raises(StoreError, match="holds chain 'chain-a', not 'chain-b'"):
        asyncio.run(_serve_once(load_hub_config(cfg.path)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    """A fresh process: Alembic logs some of its chatter while it is imported."""
    return subprocess.run([sys.executable, "-m", "gridtrace", *args], capture_output=True, text=True, timeout=60)


def test_alembic_chatter_stays_out_of_hub_commands_but_hub_migrate_reports_its_steps(tmp_path: Path) -> None:
    from hubharness import init_hub
    from protos.signing import Signer, write_public_key

    cfg = init_hub(tmp_path / "hub")
    write_public_key(tmp_path / "gw.pem", Signer.generate().public_key)
    added = _cli("hub", "gateway", "add", "gw-1", "--public-key", str(tmp_path / "gw.pem"), "--config", str(cfg.path))
    assert added.returncode == 0 and "registered" in added.stdout
    assert "alembic" not in added.stderr and "Context impl" not in added.stderr, added.stderr

    engine = engine_for(cfg.database_url)
    behind = migrate.downgrade(engine, "-1")
    engine.dispose()
    done = _cli("hub", "migrate", "--config", str(cfg.path))
    assert done.returncode == 0 and f"migrated from {behind.current} to {behind.head}" in done.stdout
    assert f"Running upgrade {behind.current} -> {behind.head}" in done.stderr
    assert "Context impl" not in done.stderr and "non-transactional DDL" not in done.stderr
    assert "setup plugin" not in done.stderr, done.stderr


def test_migrations_run_from_an_installed_wheel(tmp_path: Path) -> None:
    """The migration scripts ship in the wheel: migrate from it, away from the source tree."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Build from a copy of the source, so setuptools' build/ lands there, not in the work tree.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "demo-out",
    ))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, timeout=300, cwd=tmp_path)
    wheel = next(wheels.glob("gridtrace-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    assert (target / "hub/storage/migrations/versions/0001_initial_0_1.py").exists()

    hub_dir = tmp_path / "hub"
    assert gridtrace_main(["hub", "init", "--dir", str(hub_dir), "--chain-id", "c-1", "--insecure"]) == 0
    url = f"sqlite:///{hub_dir / 'hub.sqlite'}"
    engine = engine_for(url)
    migrate.downgrade(engine, "base")
    engine.dispose()

    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import hub.storage.migrate as m; print(m.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.startswith(str(target)), probe.stdout
    done = subprocess.run(
        [sys.executable, "-m", "gridtrace", "hub", "migrate", "--config", str(hub_dir / "hub.toml")],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"to {migrate.head_revision()}" in done.stdout
    engine = engine_for(url)
    try:
        assert migrate.status(engine).at_head and schema_differences(engine) == []
    finally:
        engine.dispose()


def test_frozen_0_1_schema_is_what_revision_0001_creates(engine) -> None:  # noqa: ANN001
    migrate.upgrade(engine, "0001")
    with engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), schema_0_1.build(MetaData())) == []


def test_data_survives_0002_down_and_up_from_an_unversioned_0_1_database(database_url: str, tmp_path: Path) -> None:
    """A chain's entries go payloads/spans -> 0.1.0 `entries` -> payloads/spans unchanged, and the
    certificates built before and after are byte for byte the same document."""
    from chainfixture import build_chain
    from hub.certificates.build import build_certificate

    chain = build_chain(tmp_path / "chain", database_url)
    store = chain.store

    def snapshot(store: Store) -> tuple:
        certs = [
            build_certificate(store, chain.hub_signer, chain.chain_id, m, chain.from_ns, chain.to_ns, chain.to_ns).document
            for m in chain.meter_ids
        ]
        return list(store.iter_entries()), store.counts(), store.gateway_heads(), certs

    before = snapshot(store)
    assert before[1][2] == sum(len(es) for es in chain.entries.values())

    migrate.downgrade(store.engine, "0001")
    entries = schema_0_1.metadata.tables["entries"]
    with store.engine.connect() as c:
        rows = c.execute(entries.select().order_by(entries.c.batch_id, entries.c.idx)).all()
        c.execute(text("DROP TABLE alembic_version"))
        c.commit()
    assert [(r.batch_id, r.idx, r.meter_id, r.kind, r.seq, r.ts_ns, bytes(r.body)) for r in rows] == [
        (e.batch_id, e.idx, e.meter_id, e.kind, e.seq, e.ts_ns, e.body) for e in before[0]
    ]

    store.close()
    store = Store(database_url)  # a fresh writer: nothing cached from before
    try:
        assert migrate.upgrade(store.engine).at_head and schema_differences(store.engine) == []
        assert snapshot(store) == before
    finally:
        store.close()


def test_a_failed_data_migration_leaves_the_database_as_it_was(engine) -> None:  # noqa: ANN001
    """0002 refuses entries that are not numbered 0..n-1; nothing of its DDL may stay behind."""
    _old_database(engine)
    md = schema_0_1.metadata
    with engine.begin() as c:
        c.execute(md.tables["blocks"].insert().values(
            height=1, hash=b"\x01" * 32, header=b"h", time_ns=1, batch_count=1, entry_count=2, log_size=1))
        c.execute(md.tables["batches"].insert().values(
            id=1, gateway_id="gw", seq=1, hash=b"\x02" * 32, header=b"h", signature=b"s" * 64, entry_count=2,
            stored_ns=1, block_height=1, block_index=0, log_index=0))
        for idx in (0, 2):  # entry 1 is missing
            c.execute(md.tables["entries"].insert().values(
                batch_id=1, idx=idx, meter_id="M", kind=0, seq=idx + 1, ts_ns=idx, body=b"b"))
    tables_before = sorted(inspect(engine).get_table_names())
    with pytest.raises(RuntimeError, match="batch 1: its entries are not numbered 0..1"):
        migrate.upgrade(engine)
    engine.dispose()
    assert sorted(inspect(engine).get_table_names()) == tables_before  # no meters, spans, alembic_version
    with engine.connect() as c:
        assert [c2["name"] for c2 in inspect(c).get_columns("chain_state")] == ["id", "chain_id", "log_frontier"]
        assert c.execute(text("SELECT count(*) FROM entries")).scalar_one() == 2


def test_0003_compacts_payloads_and_downgrade_stores_them_whole(database_url: str, tmp_path: Path) -> None:
    """0002 payloads (bodies whole) -> 0003 (names fields once per batch) -> 0002: the bodies,
    Merkle roots and certificates are the same at every step, and 0003 stores fewer bytes."""
    from chainfixture import build_chain
    from hub.certificates.build import build_certificate
    from hub.storage.payload import unpack_bodies
    from protos import merkle
    from protos.canonical import decode_batch_header

    chain = build_chain(tmp_path / "chain", database_url)
    store = chain.store

    def certs() -> list:
        return [
            build_certificate(store, chain.hub_signer, chain.chain_id, m, chain.from_ns, chain.to_ns, chain.to_ns).document
            for m in chain.meter_ids
        ]

    def payload_bytes() -> int:
        with store.engine.connect() as c:
            return c.execute(text("SELECT sum(length(bodies)) FROM batch_payloads")).scalar_one()

    entries, before, compact = list(store.iter_entries()), certs(), payload_bytes()
    migrate.downgrade(store.engine, "0002")
    assert "names" not in [c["name"] for c in inspect(store.engine).get_columns("batch_payloads")]
    with store.engine.connect() as c:
        rows = c.execute(text(
            "SELECT p.bodies, p.offsets, b.header FROM batch_payloads p JOIN batches b ON b.id = p.batch_id"
        )).all()
    assert rows
    for r in rows:  # stored whole again: the leaves of the root the gateway signed
        bodies = unpack_bodies(bytes(r.bodies), bytes(r.offsets), "test")
        assert merkle.root(bodies) == decode_batch_header(bytes(r.header)).entries_root
    assert payload_bytes() > 2 * compact
    store.close()
    store = Store(database_url)
    try:
        assert migrate.upgrade(store.engine).at_head and schema_differences(store.engine) == []
        assert payload_bytes() == compact
        assert list(store.iter_entries()) == entries and certs() == before
    finally:
        store.close()
