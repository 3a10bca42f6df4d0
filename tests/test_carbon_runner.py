"""The carbon contract on the chain: a runner computes each settlement interval from sealed
readings and publishes the results as contract records through a real hub; they are sealed,
a meter's certificate carries its carbon beside its readings and verifies offline, and an
audit recomputes every interval from the chain. Forged, edited and unbelieved results fail."""

from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path

import pytest

from gridtrace.cli import main
from hub.certificates.build import build_certificate
from hub.certificates.trust import parse_trust
from hub.certificates.verify import VerificationError, verify_certificate
from hub.config import load_hub_config
from hub.contracts.carbon.records import (
    CONTRACT,
    KIND_INTERVAL,
    MODEL_SUBJECT,
    SUBJECT,
    RecordsError,
    meter_carbon,
)
from hub.storage.store import Store
from protos.canonical import decode_entry
from protos.records import ContractRecord
from protos.signing import write_public_key
from tests.chainfixture import CHAIN_ID, T0_NS, build_chain
from tests.hubharness import RunningHub, init_hub
from tests.test_carbon_interval import METERS
from tests.test_carbon_trace import write

pytest.importorskip("pandapower")
RUNNER = "carbon.sub-7"
INTERVAL_S = 60
INTERVALS = 4  # the fixture's readings span 240 s from T0


def iso(ns: int) -> str:
    from hub.certificates.document import iso_ns

    return iso_ns(ns)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The fixture chain served by a real hub (its key, its database), a model of its meters
    and a runner registered at the hub, which has published every interval once."""
    tmp = tmp_path_factory.mktemp("runner")
    chain = build_chain(tmp / "chain")
    chain.store.close()
    cfg = init_hub(tmp / "hub", chain_id=CHAIN_ID)
    key = cfg.key
    key.unlink()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(chain.hub_signer.private_key_pem())
    write_public_key(cfg.path.parent / "hub.pub.pem", chain.hub_signer.public_key)
    text = cfg.path.read_text().replace('database = "hub.sqlite"', f'database = "{chain.db_path}"')
    cfg.path.write_text(text)
    cfg = load_hub_config(cfg.path)
    factors = write(tmp / "factors.json", {"ext_grid:0": 0.7, "gen:0": 0.45})
    model = tmp / "model.json"
    assert main(["carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors", str(factors),
                 "--meters", str(write(tmp / "meters.json", METERS)), "--out", str(model)]) == 0
    runner = tmp / "runner"
    assert main(["carbon", "runner-init", str(runner), "--id", RUNNER, "--hub", cfg.listen, "--insecure",
                 "--hub-key", str(cfg.path.parent / "hub.pub.pem"), "--model", str(model),
                 "--hub-config", str(cfg.path), "--interval", str(INTERVAL_S)]) == 0
    assert os.stat(runner / "runner.key").st_mode & 0o777 == 0o600
    conf = runner / "carbon.toml"
    end = T0_NS + INTERVALS * INTERVAL_S * 10**9
    written = conf.read_text()
    assert re.search(r'(?m)^start = "\d{4}-', written)  # runner-init writes the interval running then
    conf.write_text(re.sub(r'(?m)^start = .*$', f'start = "{iso(T0_NS)}"\nend = "{iso(end)}"', written))
    assert main(["hub", "gateway", "add", RUNNER, "--public-key", str(runner / "runner.pub.pem"),
                 "--config", str(cfg.path)]) == 0
    with RunningHub(cfg) as hub:
        assert main(["carbon", "run", "--config", str(conf), "--once"]) == 0
        wait_sealed(hub.store())
        yield tmp, chain, cfg, model, conf, hub


def wait_sealed(store: Store, timeout_s: float = 20.0) -> None:
    """Until the hub has sealed every batch it holds (the runner's last ones included)."""
    deadline = time.monotonic() + timeout_s
    try:
        while store.unsealed_batches(1000):
            assert time.monotonic() < deadline, "the runner's batches were not sealed"
            time.sleep(0.1)
    finally:
        store.close()


def records(store: Store, subject: str, gateway: str = RUNNER, sealed: bool = True) -> list[ContractRecord]:
    """The records one runner published about `subject` (asserted sealed, unless not asked)."""
    out = []
    for batch_id, row in store.meter_entries(subject, -(1 << 63), (1 << 63) - 1):
        batch = store.batch_by_id(batch_id)
        if batch.gateway_id == gateway:
            assert batch.block_height is not None or not sealed, "a published record is not sealed"
            out.append(decode_entry(row.body))
    return out


def test_every_interval_is_published_once_in_order_and_sealed(site):
    _tmp, _chain, cfg, model, conf, hub = site
    store = hub.store()
    try:
        intervals = records(store, SUBJECT)
        assert [(r.from_ns - T0_NS) // 10**9 for r in intervals] == [0, 60, 120, 180]
        assert all(r.kind == KIND_INTERVAL and r.contract == CONTRACT for r in intervals)
        version = json.loads(model.read_text())["version"]
        (reg,) = records(store, MODEL_SUBJECT)
        assert reg.document()["model_version"] == version and reg.document()["meters"] == METERS
        for r in intervals:
            body = r.document()
            assert body["model_version"] == version and body["meters"] == len(METERS)
            assert body["conservation"]["relative_residual"] < 1e-12
            # the whole result is kept under its hash, and says the same
            doc = json.loads((conf.parent / "results" / f"{body['result_sha256']}.json").read_text())
            assert doc["inputs_sha256"] == body["inputs_sha256"] and doc["totals"] == body["totals"]
        for meter in METERS:
            mine = [meter_carbon(r) for r in records(store, meter)]
            assert [m.from_ns for m in mine] == [r.from_ns for r in intervals]
            assert all(m.emission_t > 0 and m.intensity_t_per_mwh > 0 and m.model_version == version for m in mine)
    finally:
        store.close()
    # the hub's own audit of every block, batch and entry takes contract records in its stride
    assert main(["hub", "verify", "--config", str(cfg.path), "--deep"]) == 0
    # a second run finds nothing due and publishes nothing again (not the model either)
    assert main(["carbon", "run", "--config", str(conf), "--once"]) == 0
    store = hub.store()
    try:
        assert len(records(store, SUBJECT)) == INTERVALS and len(records(store, MODEL_SUBJECT)) == 1
    finally:
        store.close()


def certificate(hub: RunningHub, chain, meter: str) -> dict:
    store = hub.store()
    try:
        return build_certificate(store, chain.hub_signer, CHAIN_ID, meter, chain.from_ns - 10**9,
                                 T0_NS + INTERVALS * INTERVAL_S * 10**9, time.time_ns()).document
    finally:
        store.close()


def trust(chain, site_dir: Path, runners: list[str]):
    from hub.certificates.trust import trust_document
    from protos.signing import load_public_key

    gateways = {gw: [s.public_key] for gw, s in chain.gateway_signers.items()}
    gateways[RUNNER] = [load_public_key(site_dir / "runner" / "runner.pub.pem")]
    doc = trust_document(gateways, {CHAIN_ID: (1, [(chain.hub_replica_id, chain.hub_signer.public_key)])},
                         {CONTRACT: runners} if runners else None)
    return parse_trust(doc, "test trust")


def test_a_meters_certificate_carries_its_carbon_and_verifies_offline(site, capsys):
    tmp, chain, cfg, _model, conf, hub = site
    doc = certificate(hub, chain, "MTR-2")
    summary = verify_certificate(doc, trust(chain, tmp, [RUNNER]))
    assert summary.readings == len(chain.readings("MTR-2"))
    carbon = [meter_carbon(r) for r in summary.contract_records]
    assert len(carbon) == INTERVALS and all(c.element == "load:1" for c in carbon)
    # the figures are the interval results' own
    for c in carbon:
        result = json.loads((conf.parent / "results" / f"{c.result_sha256}.json").read_text())
        load = result["loads"]["load:1"]
        assert c.emission_t == pytest.approx(load["emission_t_per_h"] * INTERVAL_S / 3600, rel=1e-15)
        assert sum(c.sources_t_per_h.values()) == pytest.approx(load["emission_t_per_h"], rel=1e-12)
    # the trust file the hub writes names the runner, and the CLI shows the carbon
    tr = tmp / "trust.json"
    assert main(["hub", "trust", "--config", str(cfg.path), "-o", str(tr), "--contract-runner", f"{CONTRACT}={RUNNER}"]) == 0
    assert json.loads(tr.read_text())["contracts"] == {CONTRACT: [RUNNER]}
    cert = tmp / "mtr2.json"
    cert.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["cert", "verify", str(cert), "--trust", str(tr)]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and f"carbon: {INTERVALS} intervals" in out and "+1min" in out and "load:1" in out
    assert main(["cert", "verify", str(cert), "--trust", str(tr), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["contract_records"]
    assert [r["body"]["emission_t"] for r in shown] == [c.emission_t for c in carbon]
    assert main(["hub", "trust", "--config", str(cfg.path), "-o", str(tr), "--contract-runner", f"{CONTRACT}=gw-x"]) == 2
    assert "must be CONTRACT=GATEWAY with a registered gateway" in capsys.readouterr().err


def test_carbon_from_a_runner_the_trust_file_does_not_name_is_not_believed(site):
    """The readings still verify: a gateway that slips a record into a meter's entries cannot
    break the meter's certificates, only fail to be believed."""
    tmp, chain, _cfg, _model, _conf, hub = site
    doc = certificate(hub, chain, "MTR-2")
    summary = verify_certificate(doc, trust(chain, tmp, []))
    assert summary.readings == len(chain.readings("MTR-2")) and summary.contract_records == ()
    assert (summary.unbelieved_records, summary.unbelieved_runners) == (INTERVALS, (RUNNER,))
    believed = verify_certificate(doc, trust(chain, tmp, [RUNNER]))
    assert len(believed.contract_records) == INTERVALS and believed.unbelieved_records == 0


def test_an_edited_carbon_figure_in_a_certificate_fails_verification(site):
    tmp, chain, _cfg, _model, _conf, hub = site
    doc = certificate(hub, chain, "MTR-2")
    edited = copy.deepcopy(doc)
    item = next(e for e in edited["entries"] if "contract_record" in e)
    item["contract_record"]["body"]["emission_t"] *= 0.5
    with pytest.raises(VerificationError, match=r"meter-interval record of MTR-2 is not entry \d+ of its signed batch \(value changed"):
        verify_certificate(edited, trust(chain, tmp, [RUNNER]))
    moved = copy.deepcopy(doc)
    item = next(e for e in moved["entries"] if "contract_record" in e)
    item["contract_record"]["subject"] = "MTR-1"
    with pytest.raises(VerificationError):
        verify_certificate(moved, trust(chain, tmp, [RUNNER]))


def test_the_audit_recomputes_every_interval_from_the_chain(site, capsys):
    _tmp, _chain, cfg, model, _conf, _hub = site
    code = main(["carbon", "audit", "--model", str(model), "--config", str(cfg.path), "--runner", RUNNER])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("identical") == INTERVALS and "4 intervals, 0 differ" in out


def test_a_forged_result_is_caught_by_the_audit(site, capsys, tmp_path):
    """A runner that published a result the chain's readings do not give: the audit says which
    interval and which meter."""
    from hub.contracts.carbon.audit import audit_intervals
    from hub.contracts.carbon.model import read_model
    from hub.contracts.carbon.records import interval_records

    _tmp, _chain, cfg, model, _conf, hub = site
    store = hub.store()
    try:
        m = read_model(model)
        from hub.contracts.carbon.compute import compute_interval

        doc = compute_interval(store, m, T0_NS, T0_NS + INTERVAL_S * 10**9).doc
    finally:
        store.close()
    doc["loads"]["load:1"]["emission_t_per_h"] *= 0.5  # a runner halving one meter's carbon
    forged = interval_records(doc)
    from edge.config import UplinkConfig
    from hub.contracts.runner import Publisher, RunnerIdentity
    from protos.signing import create_key_pair

    create_key_pair(tmp_path, "forger")
    gw = "carbon.forger"
    assert main(["hub", "gateway", "add", gw, "--public-key", str(tmp_path / "forger.pub.pem"),
                 "--config", str(cfg.path)]) == 0
    identity = RunnerIdentity(gw, tmp_path / "forger.key", tmp_path / "q.sqlite", UplinkConfig(
        hub=cfg.listen, tls_ca=None, tls_server_name=None, hub_public_key=cfg.path.parent / "hub.pub.pem",
        insecure_plaintext=True, max_in_flight=4, reconnect_max_s=1.0))
    import asyncio

    pub = Publisher(identity)
    try:
        pub.publish(forged)
        assert asyncio.run(pub.drain(20))
    finally:
        pub.close()
    wait_sealed(hub.store())
    store = hub.store()
    try:
        rows = audit_intervals(store, read_model(model), gw, -(1 << 63), (1 << 63) - 1)
    finally:
        store.close()
    assert [(r.from_ns, r.verdict) for r in rows] == [(T0_NS, "differs")]
    assert rows[0].detail.startswith("MTR-2: emission_t ") and "published" in rows[0].detail
    # and the honest runner's intervals still audit clean: the forger's records are not theirs
    code = main(["carbon", "audit", "--model", str(model), "--config", str(cfg.path), "--runner", RUNNER])
    assert code == 0, capsys.readouterr().out


class Captured:
    """A publisher that keeps what it is given (the runner's decisions without a hub)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.identity = SimpleNamespace(gateway_id="carbon.test")
        self.published: list[ContractRecord] = []

    def publish(self, records: list[ContractRecord]) -> None:
        self.published += records

    def last_timestamp(self, subject: str) -> int | None:
        return max((r.from_ns for r in self.published if r.subject == subject), default=None)


def test_an_interval_that_cannot_be_computed_is_retried_then_recorded_with_its_reason(site, tmp_path):
    from hub.contracts.carbon.model import read_model
    from hub.contracts.carbon.runner import CarbonRunner, load_runner_config

    _tmp, _chain, _cfg, _model, conf, _hub = site
    bad = tmp_path / "model.json"
    assert main(["carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors",
                 str(write(tmp_path / "f.json", {})), "--meters",
                 str(write(tmp_path / "m.json", {**METERS, "MTR-9": "load:3"})), "--out", str(bad)]) == 0
    rc = load_runner_config(conf)
    pub = Captured()
    store = Store(rc.database_url)
    try:
        runner = CarbonRunner(rc, read_model(bad), pub, store)
        end = T0_NS + INTERVAL_S * 10**9
        assert runner.step(end + rc.settle_ns) == [] and pub.published == []  # due, failing: retried later
        # past give_up_s after its end, but this process has not retried it for give_up_s yet
        assert runner.step(end + rc.give_up_ns) == [] and pub.published == []
        done = runner.step(end + rc.settle_ns + rc.give_up_ns)
    finally:
        store.close()
    assert [d.from_ns for d in done] == [T0_NS] and "meter MTR-9: 0 readings" in done[0].error
    (failed,) = pub.published
    assert failed.kind == KIND_INTERVAL and "meter MTR-9" in failed.document()["error"]
    with pytest.raises(RecordsError):
        meter_carbon(failed)


def test_runner_intervals_follow_the_epoch_and_the_last_published_one():
    from hub.contracts.carbon.runner import next_interval

    i = 900 * 10**9
    assert next_interval(None, 3 * i + 7, i) == (3 * i, 4 * i)
    assert next_interval(5 * i, 0, i) == (6 * i, 7 * i)


@pytest.mark.parametrize("edit, says", [
    ({"interval_s = 60": "interval_s = 5"}, "at least 10 s"),
    ({'hub_config = "': 'database = "sqlite:///x.db"\nhub_config = "'}, "one of them"),
    ({"settle_s = 60": "settle_s = 7200"}, "give_up_s"),
    ({f'id = "{RUNNER}"': 'id = "bad id"'}, "[runner] id"),
    ({"start = ": "# start = "}, "start: missing: the first interval"),
])
def test_a_wrong_runner_config_names_the_setting(site, tmp_path, capsys, edit, says):
    conf = site[4]
    text = conf.read_text()
    for old, new in edit.items():
        assert old in text
        text = text.replace(old, new)
    bad = tmp_path / "carbon.toml"
    bad.write_text(text.replace('key = "runner.key"', f'key = "{conf.parent / "runner.key"}"'))
    assert main(["carbon", "run", "--config", str(bad), "--once"]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("contracts, says", [
    ([], "contracts must be an object"),
    ({CONTRACT: "carbon.sub-7"}, "must be a list of gateway ids"),
    ({CONTRACT: ["carbon.nobody"]}, "names carbon.nobody, not in gateways"),
])
def test_a_trust_file_naming_runners_wrongly_is_refused(site, contracts, says):
    from hub.certificates.trust import TrustError

    chain = site[1]
    doc = chain.trust_doc()
    doc["contracts"] = contracts
    with pytest.raises(TrustError, match=says):
        parse_trust(doc, "trust.json")


def test_a_runners_queue_keeps_its_place_and_refuses_results_it_has_no_room_for(tmp_path):
    """The runner's place (its last interval) is committed with the records, and survives a
    reopen; results that do not fit are refused whole, never cut to fit."""
    from edge.queue import DurableQueue, QueueError
    from protos.batch import seal_batch
    from protos.records import canonical_json_bytes
    from protos.signing import Signer

    def rec(subject: str, at: int, size: int = 10) -> ContractRecord:
        return ContractRecord(subject, at, at + 60, CONTRACT, "meter-interval", canonical_json_bytes({"x": "y" * size}))

    q = DurableQueue(tmp_path / "q.sqlite", "carbon.test", max_bytes=2**20)
    q.append_records([rec(SUBJECT, 60), rec("MTR-1", 60)])
    q.append_records([rec(SUBJECT, 120)])
    q.close()
    q = DurableQueue(tmp_path / "q.sqlite", "carbon.test", max_bytes=2**20)
    try:
        assert q.last_timestamp(SUBJECT) == 120 and q.last_timestamp("MTR-1") == 60 and q.last_timestamp("MTR-2") is None
        with pytest.raises(QueueError, match="queue full"):
            q.append_records([rec(SUBJECT, 180), rec("MTR-1", 180, size=600_000), rec("MTR-2", 180, size=600_000)])
        assert q.last_timestamp(SUBJECT) == 120  # nothing of the refused set was kept
        signer = Signer.generate()

        def seal(seq: int, prev: bytes, bodies: list[bytes], ts: list[int]):
            sealed = seal_batch(signer, "carbon.test", seq, prev, bodies, ts, 1)
            return sealed.header, sealed.signature, sealed.hash

        q.seal_next_batch(100, seal)
        (batch,) = q.pending_batches(0, 10)
        assert [(e.subject, e.from_ns) for e in batch.entries] == [(SUBJECT, 60), ("MTR-1", 60), (SUBJECT, 120)]
    finally:
        q.close()


def test_an_outsourced_interval_publishes_its_compute_records_and_audits_within_tolerance(site, tmp_path):
    """With providers, the runner's interval record carries who solved, who was wrong and the
    provider book; the audit, solving locally, accepts the masked answers' last bits and
    nothing more."""
    import dataclasses

    from hub.contracts.carbon.audit import _compare
    from hub.contracts.carbon.compute import compute_interval
    from hub.contracts.carbon.model import read_model
    from hub.contracts.carbon.records import interval_records
    from hub.contracts.carbon.runner import CarbonRunner, load_runner_config
    from protos.records import canonical_json_bytes
    from tests.test_outsourcing import Fleet, wrong

    conf, model = site[4], site[3]
    fleet = Fleet()
    try:
        entries = []
        for p in [fleet.add("p1"), fleet.add("p2", wrong), fleet.add("p3")]:
            write_public_key(tmp_path / f"{p.name}.pem", p.public_key)
            entries.append({"name": p.name, "address": p.address, "public_key": f"{p.name}.pem", "insecure": True})
        rc = dataclasses.replace(load_runner_config(conf), providers=write(tmp_path / "providers.json", {"providers": entries}),
                                 provider_book=tmp_path / "book.json", shares=False, results=tmp_path / "results")
        pub = Captured()
        store = Store(rc.database_url)
        try:
            runner = CarbonRunner(rc, read_model(model), pub, store)
            try:
                (done,) = runner.step(T0_NS + INTERVAL_S * 10**9 + rc.settle_ns)
            finally:
                runner.close()
            local = compute_interval(store, read_model(model), T0_NS, T0_NS + INTERVAL_S * 10**9, shares=False,
                                     sealed_height=pub.published[0].document()["sealed_height"]).doc
        finally:
            store.close()
    finally:
        fleet.stop()
    itv = pub.published[0]
    body = itv.document()
    assert itv.kind == KIND_INTERVAL and done.result_sha256 == body["result_sha256"]
    (rec,) = body["outsourcing"]["records"]
    assert rec["wrong"] == ["p2"] and sorted(rec["accepted_by"]) == ["p1", "p3"]
    assert body["outsourcing"]["provider_book"]["wrong"] == {"p2": 1}
    assert json.loads((tmp_path / "book.json").read_text())["wrong"] == {"p2": 1}
    assert (tmp_path / "results" / f"{done.result_sha256}.json").exists()
    local["outsourcing"] = body["outsourcing"]
    again = interval_records(local)
    assert _compare(pub.published, again, outsourced=True) is None
    assert _compare(pub.published, again, outsourced=False) is not None  # not the same bits
    # a figure off by more than a masked solve's rounding is caught
    forged = []
    for r in pub.published:
        b = r.document()
        if r.subject == "MTR-3":
            b["emission_t"] *= 1 + 1e-6
        forged.append(dataclasses.replace(r, body=canonical_json_bytes(b)))
    assert _compare(forged, again, outsourced=True).startswith("MTR-3: emission_t ")


def test_the_runner_as_a_service_publishes_what_falls_due_and_stops_cleanly(site, tmp_path):
    """`carbon run` without --once: a second runner of the same model, its own identity, works
    through the due intervals while its uplink runs, and stops on request with all receipted."""
    import asyncio
    import dataclasses
    import threading

    from edge.queue import DurableQueue
    from hub.contracts.carbon.runner import load_runner_config, run_carbon
    from protos.signing import create_key_pair

    _tmp, _chain, cfg, _model, conf, hub = site
    create_key_pair(tmp_path, "runner2")
    assert main(["hub", "gateway", "add", "carbon.second", "--public-key", str(tmp_path / "runner2.pub.pem"),
                 "--config", str(cfg.path)]) == 0
    rc = load_runner_config(conf)
    rc = dataclasses.replace(rc, results=tmp_path / "results", identity=dataclasses.replace(
        rc.identity, gateway_id="carbon.second", key=tmp_path / "runner2.key", queue=tmp_path / "q.sqlite"))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run_until_complete(run_carbon(rc, stop, tick_s=0.2))))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            store = hub.store()
            try:
                mine = records(store, SUBJECT, "carbon.second", sealed=False)
            finally:
                store.close()
            if len(mine) == INTERVALS:
                break
            assert time.monotonic() < deadline and thread.is_alive(), "the service did not publish every interval"
            time.sleep(0.2)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    assert result == [0] and not thread.is_alive()
    q = DurableQueue(tmp_path / "q.sqlite", "carbon.second")
    try:
        assert q.stats().batches == 0  # every batch receipted before it stopped
    finally:
        q.close()



def test_an_interval_is_not_computed_where_only_some_entries_are_stored(site):
    """At a custody replica (payload_copies) some sealed batches are held by header only: a
    meter's readings there may be part of the chain's, so the interval is refused, not
    computed short."""
    from hub.contracts.carbon.compute import IncompleteStore, compute_interval
    from hub.contracts.carbon.model import read_model

    class CustodyStore:
        def header_only_batches(self, limit: int = 1000) -> list[object]:
            return [object()]

    with pytest.raises(IncompleteStore, match="by header only .* payload_copies"):
        compute_interval(CustodyStore(), read_model(site[3]), T0_NS, T0_NS + INTERVAL_S * 10**9)
