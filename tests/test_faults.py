"""Faults inside the agent and the hub: a database that refuses commits, a hub that rejects
a gateway that is not enrolled yet, meters that answer NaN. Nothing accepted is lost, nothing
is receipted that was not stored, and no part stops for good."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.config import MeterConfig, UplinkConfig
from edge.poller import new_meter_state, to_reading
from edge.sources import parse_source_url
from edge.queue import DurableQueue
from edge.registermap import load_register_map
from edge.uplink import Uplink
from hub.ingest.check import Reason, Rejection
from hub.ingest.service import Ingestor, StoreFailure
from hub.storage.store import Store
from protos.batch import seal_batch
from protos.canonical import encode_reading
from protos.records import ClockStatus, Quality, Quantity, Reading
from protos.signing import Signer, public_key_pem

from hubharness import GatewaySim, RunningHub, init_hub, reading_layout, register_gateway, replace_entry


class FlakyStore(Store):
    """A store whose commits fail for chosen gateways, or whose head lookups fail."""

    fail_gateways: set[str] = set()
    fail_heads = False

    def store_batches(self, new, stored_ns):  # noqa: ANN001
        if any(b.gateway_id in self.fail_gateways for b in new):
            raise OSError("disk I/O error (injected)")
        return super().store_batches(new, stored_ns)

    def gateway_head(self, gateway_id):  # noqa: ANN001
        if self.fail_heads:
            raise OSError("database is locked (injected)")
        return super().gateway_head(gateway_id)


def ingestor_for(tmp_path: Path, gateways: list[GatewaySim]) -> tuple[Ingestor, FlakyStore]:
    cfg = init_hub(tmp_path / "hub")
    for gw in gateways:
        register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    store = FlakyStore(cfg.database_url)
    store.fail_gateways = set()
    hub_signer = Signer.generate()
    return Ingestor(store, ThreadPoolExecutor(1), hub_signer, cfg.chain_id, max_group=64), store


def test_a_failed_commit_fails_only_its_gateway_and_a_resend_then_succeeds(tmp_path):
    good, bad = GatewaySim.new("gw-good", "MTR-1"), GatewaySim.new("gw-bad", "MTR-2")
    ingestor, store = ingestor_for(tmp_path, [good, bad])

    async def run() -> None:
        await ingestor.start()
        store.fail_gateways = {"gw-bad"}
        bad1, bad2 = bad.batch(3), bad.batch(3)
        futs = [await ingestor.submit(m) for m in (good.batch(2), bad1, good.batch(2), bad2)]
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["Receipt", "StoreFailure", "Receipt", "StoreFailure"]
        assert "disk I/O error" in str(results[1])
        assert store.counts()[0] == 2  # the good gateway's two batches, nothing of the bad one

        # The disk recovers; the agent re-sends from its first unreceipted batch.
        store.fail_gateways = set()
        receipts = await asyncio.gather(*[await ingestor.submit(m) for m in (bad1, bad2)])
        assert [(r.batch_seq, r.duplicate) for r in receipts] == [(1, False), (2, False)]
        assert store.counts()[0] == 4
        await ingestor.stop()

    asyncio.run(run())


def test_unreadable_database_is_unavailable_then_recovers(tmp_path):
    gw = GatewaySim.new()
    ingestor, store = ingestor_for(tmp_path, [gw])

    async def run() -> None:
        await ingestor.start()
        store.fail_gateways = {gw.gateway_id}
        first = gw.batch(2)
        with pytest.raises(StoreFailure):
            await (await ingestor.submit(first))
        store.fail_gateways, store.fail_heads = set(), True
        with pytest.raises(Rejection) as info:
            await ingestor.submit(first)
        assert info.value.reason is Reason.UNAVAILABLE and "database" in info.value.message
        store.fail_heads = False
        receipt = await (await ingestor.submit(first))
        assert receipt.batch_seq == 1 and not receipt.duplicate
        await asyncio.wait_for(ingestor.stop(), 5)

    asyncio.run(run())


def test_a_batch_with_a_sequence_number_beyond_the_database_range_is_malformed(tmp_path):
    gw = GatewaySim.new()
    ingestor, store = ingestor_for(tmp_path, [gw])
    msg = gw.batch(1)
    replace_entry(msg, 0, lambda b: b[: reading_layout(b)["seq"]] + (2**63).to_bytes(8, "big") + b[reading_layout(b)["seq"] + 8 :])

    async def run() -> None:
        await ingestor.start()
        with pytest.raises(Rejection) as info:
            await ingestor.submit(msg)
        assert info.value.reason is Reason.MALFORMED and "seq" in info.value.message
        await ingestor.stop()

    asyncio.run(run())


def queue_with_batches(path: Path, gateway_id: str, signer: Signer, batches: int, size: int) -> DurableQueue:
    q = DurableQueue(path, gateway_id)
    seq = 0
    for _ in range(batches):
        readings = []
        for _ in range(size):
            seq += 1
            readings.append(Reading("MTR-1", seq, time.time_ns(), ClockStatus.SYNCHRONIZED, Quality.OK,
                                    tuple(Quantity(f"q{j:02d}", "V", 230.0 + j) for j in range(20))))
        q.append_readings(readings)
        q.seal_next_batch(size, lambda s, prev, bodies, ts: _sealed(signer, gateway_id, s, prev, bodies, ts))
    return q


def _sealed(signer, gateway_id, seq, prev, bodies, ts):  # noqa: ANN001
    s = seal_batch(signer, gateway_id, seq, prev, bodies, ts, time.time_ns())
    return s.header, s.signature, s.hash


def test_agent_started_before_enrollment_reports_why_and_delivers_once_enrolled(tmp_path):
    cfg = init_hub(tmp_path / "hub")
    signer = Signer.generate()
    queue = queue_with_batches(tmp_path / "queue.sqlite", "gw-late", signer, batches=20, size=200)
    uplink_cfg = UplinkConfig(
        hub=cfg.listen, tls_ca=None, tls_server_name=None, hub_public_key=tmp_path / "hub" / "hub.pub.pem",
        insecure_plaintext=True, max_in_flight=8, reconnect_max_s=1.0,
    )
    with RunningHub(cfg) as hub:
        async def run() -> str:
            uplink = Uplink(uplink_cfg, queue, "gw-late")
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            deadline = time.monotonic() + 20
            while uplink.stats.last_error is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            reason = uplink.stats.last_error or ""
            # The operator enrolls the gateway; the agent's retries now get through.
            pem = tmp_path / "gw.pub.pem"
            pem.write_text(public_key_pem(signer.public_key))
            from gridtrace.cli import main

            assert main(["hub", "gateway", "add", "gw-late", "--public-key", str(pem), "--config", str(cfg.path)]) == 0
            drained = await uplink.drain(30)
            stop.set()
            await asyncio.wait_for(task, 10)
            assert drained, f"queue not drained: {queue.stats()} last error {uplink.stats.last_error}"
            return reason

        reason = asyncio.run(run())
        assert "UNAUTHENTICATED" in reason and "not registered" in reason
        assert hub.store().counts()[0] == 20


def test_nan_register_values_make_a_partial_reading_not_a_crash():
    regmap = load_register_map("eastron_sdm630")
    url = "modbus-tcp://x:502?unit=1"
    state = new_meter_state(MeterConfig("MTR-1", url, 1.0, parse_source_url(url), regmap.name, regmap))
    values = {r.name: 1.0 for r in regmap.registers}
    names = sorted(values)
    values[names[0]] = float("nan")  # what an SDM630 answers for a value it cannot measure
    values[names[1]] = float("inf")
    reading = to_reading(state, 1, time.time_ns(), values, ClockStatus.SYNCHRONIZED)
    assert Quality.PARTIAL in reading.quality
    assert [q.name for q in reading.quantities] == names[2:]
    encode_reading(reading)  # a valid record
