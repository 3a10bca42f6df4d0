"""Batch checks in verifier processes: same verdicts as in-process, order kept per stream,
a crashed verifier costs only a re-send, the hub's memory is bounded by pending bytes, and a
graceful shutdown receipts and seals exactly what it stored."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from sqlalchemy import select

from hub.ingest.check import Reason, Rejection
from hub.ingest.service import IngestService, Ingestor
from hub.ingest.verifier import InlineVerifier, VerifierPool
from hub.storage.schema import batches
from hub.storage.store import Store
from protos import ingest_pb2, ingest_pb2_grpc
from protos.signing import Signer, public_key_pem

from hubharness import GatewaySim, RunningHub, init_hub, register_gateway, replace_entry


def _keys(*gws: GatewaySim) -> dict[str, dict[str, str]]:
    return {gw.gateway_id: {gw.signer.key_id: public_key_pem(gw.signer.public_key)} for gw in gws}


def _verdict(coro):  # noqa: ANN001
    async def run():
        try:
            return await coro
        except Rejection as exc:
            return exc.reason, exc.message
    return run()


def test_a_verifier_process_gives_the_same_verdicts_as_the_inline_check():
    gw = GatewaySim.new()
    good = gw.batch(4, advance=False)
    nan = gw.batch(4, advance=False)
    replace_entry(nan, 2, lambda b: b[:-8] + b"\x7f\xf8" + bytes(6))
    bad_sig = gw.batch(4, advance=False)
    bad_sig.signature = bytes(64)
    stranger = GatewaySim.new("gw-stranger").batch(2)
    raws = [m.SerializeToString() for m in (good, nan, bad_sig, stranger)] + [b"\xff\x01garbage"]

    async def run():
        inline, pool = InlineVerifier(), VerifierPool(1)
        await pool.start()
        try:
            for v in (inline, pool):
                v.update_keys(_keys(gw))
            return [[await _verdict(v.check(r)) for r in raws] for v in (inline, pool)]
        finally:
            await pool.stop()

    inline, pooled = asyncio.run(run())
    assert inline[0].batch == pooled[0].batch and inline[0].header == pooled[0].header
    assert inline[1:] == pooled[1:]
    assert [v[0] for v in pooled[1:]] == [Reason.MALFORMED, Reason.BAD_SIGNATURE, Reason.UNKNOWN_GATEWAY,
                                          Reason.MALFORMED]
    assert "entry 2" in pooled[1][1] and "finite" in pooled[1][1]
    assert "not a SignedBatch" in pooled[4][1]


def test_a_crashed_verifier_fails_its_batches_with_unavailable_and_is_started_again():
    gw = GatewaySim.new()
    raw = gw.batch(3, advance=False).SerializeToString()

    async def run():
        pool = VerifierPool(1)
        await pool.start()
        try:
            pool.update_keys(_keys(gw))
            assert (await pool.check(raw)).batch.seq == 1
            (pid,) = pool.pids()
            os.kill(pid, signal.SIGSTOP)  # the batch below is surely in the verifier's hands...
            in_flight = asyncio.ensure_future(_verdict(pool.check(raw)))
            await asyncio.sleep(0.2)
            assert not in_flight.done()
            os.kill(pid, signal.SIGKILL)  # ...when it dies
            reason, message = await asyncio.wait_for(in_flight, 10)
            assert reason is Reason.UNAVAILABLE and "verifier process" in message and "re-send" in message
            deadline = time.monotonic() + 20
            while pool.restarts < 1 or not pool.pids() or pool.pids() == [pid]:
                assert time.monotonic() < deadline, "the verifier was not started again"
                await asyncio.sleep(0.05)
            # the new process got the keys: the re-sent batch passes
            assert (await asyncio.wait_for(pool.check(raw), 10)).batch.seq == 1
        finally:
            await pool.stop()

    asyncio.run(run())


def test_two_verifiers_keep_each_streams_order(tmp_path):
    cfg = init_hub(tmp_path / "hub", verifier_processes=2)
    gws = [GatewaySim.new(f"gw-{i}", meter_id=f"MTR-{i}") for i in range(3)]
    for gw in gws:
        register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    # batch sizes that differ a lot, so that checks finish out of order across the two processes
    sizes = [400 if i % 3 == 0 else 1 for i in range(24)]
    plans = {gw.gateway_id: [gw.batch(n) for n in sizes] for gw in gws}
    got: dict[str, list[int]] = {}
    with RunningHub(cfg) as hub:
        def send(gw_id: str) -> None:
            with grpc.insecure_channel(hub.address) as ch:
                got[gw_id] = [r.batch_seq for r in ingest_pb2_grpc.IngestStub(ch).Stream(iter(plans[gw_id]),
                                                                                          timeout=60)]
        threads = [threading.Thread(target=send, args=(gw.gateway_id,)) for gw in gws]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with hub.store().engine.connect() as c:
            stored = c.execute(select(batches.c.gateway_id, batches.c.seq).order_by(batches.c.id)).all()
    assert got == {gw.gateway_id: list(range(1, 25)) for gw in gws}
    for gw in gws:
        assert [s for g, s in stored if g == gw.gateway_id] == list(range(1, 25))


class _GatedStore(Store):
    """Commits wait until the test opens the gate."""

    gate: threading.Event

    def store_batches(self, new, stored_ns):  # noqa: ANN001
        assert self.gate.wait(30)
        return super().store_batches(new, stored_ns)


def test_pending_bytes_cap_stops_reading_a_stream_until_commits_catch_up(tmp_path):
    cfg = init_hub(tmp_path / "hub")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    raws = [gw.batch(50).SerializeToString() for _ in range(12)]
    size = max(map(len, raws))
    store = _GatedStore(cfg.database_url)
    store.gate = threading.Event()
    pulled: list[int] = []

    async def requests():
        for i, raw in enumerate(raws):
            pulled.append(i)
            yield raw

    async def run():
        ingestor = Ingestor(store, ThreadPoolExecutor(1), Signer.generate(), cfg.chain_id,
                            max_pending_bytes=3 * size, max_in_flight_per_stream=16)
        await ingestor.start()
        results: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(IngestService(ingestor)._read(requests(), results, "test"))
        await asyncio.sleep(1.0)
        held = (len(pulled), ingestor.pending_bytes)
        store.gate.set()
        receipts = []
        while (item := await asyncio.wait_for(results.get(), 20)) is not None:
            receipts.append((await item).batch_seq)
        await reader
        await ingestor.stop()
        return held, receipts, ingestor.pending_bytes

    (pulled_while_blocked, bytes_held), receipts, left = asyncio.run(run())
    assert pulled_while_blocked <= 4, "the stream kept being read while commits were stuck"
    assert bytes_held <= 4 * size
    assert receipts == list(range(1, 13)) and left == 0


def test_graceful_shutdown_receipts_only_what_it_stored_and_seals_all_of_it(tmp_path):
    cfg = init_hub(tmp_path / "hub", block_interval=30.0)  # nothing sealed before the shutdown
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    plan = [gw.batch(200) for _ in range(60)]
    receipts: list[int] = []
    ended: list[grpc.RpcError] = []
    first = threading.Event()

    def messages():
        for i, m in enumerate(plan):
            if i == 5:
                first.wait(10)
            if i > 5:
                time.sleep(0.02)
            yield m

    hub = RunningHub(cfg).__enter__()
    try:
        def send() -> None:
            with grpc.insecure_channel(hub.address) as ch:
                try:
                    for r in ingest_pb2_grpc.IngestStub(ch).Stream(messages(), timeout=60):
                        receipts.append(r.batch_seq)
                        first.set()
                except grpc.RpcError as exc:
                    ended.append(exc)

        client = threading.Thread(target=send)
        client.start()
        assert first.wait(20)
        time.sleep(0.2)
    finally:
        hub.stop()
    client.join(20)
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended[0].details()
    assert 0 < len(receipts) < len(plan)
    store = Store(cfg.database_url)
    try:
        with store.engine.connect() as c:
            rows = c.execute(select(batches.c.seq, batches.c.block_height).order_by(batches.c.seq)).all()
    finally:
        store.close()
    assert [s for s, _ in rows] == receipts  # receipted = stored, nothing stored unreceipted
    assert all(h is not None for _, h in rows)  # and all of it sealed


def test_shutdown_ends_an_idle_stream_with_unavailable(tmp_path):
    cfg = init_hub(tmp_path / "hub")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    release = threading.Event()
    outcome: list = []

    def messages():
        yield gw.batch(2)
        release.wait(30)  # then idle: the gateway has nothing to send

    with RunningHub(cfg) as hub:
        def send() -> None:
            with grpc.insecure_channel(hub.address) as ch:
                try:
                    outcome.extend(r.batch_seq for r in ingest_pb2_grpc.IngestStub(ch).Stream(messages(), timeout=60))
                except grpc.RpcError as exc:
                    outcome.append(exc)

        client = threading.Thread(target=send)
        client.start()
        deadline = time.monotonic() + 20
        while not outcome:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    release.set()
    client.join(20)
    assert outcome[0] == 1
    assert outcome[1].code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in outcome[1].details()


def test_config_rejects_a_negative_number_of_verifiers(tmp_path):
    from hub.config import ConfigError, load_hub_config

    cfg = init_hub(tmp_path / "hub", verifier_processes=0)
    assert cfg.verifier_processes == 0
    cfg.path.write_text(cfg.path.read_text().replace("verifier_processes = 0", "verifier_processes = -1"))
    with pytest.raises(ConfigError, match=r"\[ingest\] verifier_processes"):
        load_hub_config(cfg.path)
