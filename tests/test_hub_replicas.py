"""A substation's hub as 4 PBFT replicas, for real: `gridtrace hub serve` processes on loopback
(mutual TLS between them, TLS towards gateways), agents streaming to them. The primary is
killed with SIGKILL, then a backup; one replica is paused (to the others, partitioned); they
are restarted. Every receipted batch must be in exactly one block, the same chain on every
replica, each block carrying a quorum of commit votes that `hub verify` and `cert verify`
check against the replicas' keys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from edge.queue import DurableQueue
from edge.uplink import Uplink
from protos.records import ClockStatus, Quality, Quantity, Reading
from protos.signing import Signer

from replicaharness import HubReplicas
from test_failover import _sealer

N = 4


class Gateway:
    """An agent's queue and uplink, fed with readings while the test runs."""

    def __init__(self, site: HubReplicas, directory: Path, name: str, first_hub: int) -> None:
        self.name, self.signer = name, Signer.generate()
        site.register(name, self.signer)
        self.queue = DurableQueue(directory / f"{name}.sqlite", name)
        self.uplink = Uplink(site.uplink_config(first_hub), self.queue, name)
        self.sealed = 0
        self.reading = 0

    def add_batch(self, size: int = 20) -> None:
        rs = []
        for _ in range(size):
            self.reading += 1
            rs.append(Reading(f"MTR-{self.name}", self.reading, time.time_ns(), ClockStatus.SYNCHRONIZED, Quality.OK,
                              (Quantity("energy_import", "kWh", float(self.reading)),)))
        self.queue.append_readings(rs)
        self.queue.seal_next_batch(size, _sealer_for(self.signer, self.name))
        self.sealed += 1
        self.uplink.wakeup.set()


def _sealer_for(signer: Signer, name: str):
    from protos.batch import seal_batch

    def seal(s, prev, bodies, ts):
        b = seal_batch(signer, name, s, prev, bodies, ts, time.time_ns())
        return b.header, b.signature, b.hash

    return seal


async def _feed(gateways: list[Gateway], stop: asyncio.Event, every_s: float = 0.05) -> None:
    while not stop.is_set():
        for g in gateways:
            await asyncio.to_thread(g.add_batch)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


def _stream_during(gateways: list[Gateway], faults) -> list[bool]:  # noqa: ANN001 - an async callable
    """Agents stream batches fed every 50 ms while `faults()` runs; then each drains its queue
    (True: every batch receipted)."""

    async def run() -> list[bool]:
        stop_uplinks, stop_feed = asyncio.Event(), asyncio.Event()
        uplinks = [asyncio.create_task(g.uplink.run(stop_uplinks)) for g in gateways]
        feed = asyncio.create_task(_feed(gateways, stop_feed))
        await faults()
        stop_feed.set()
        await feed
        drained = [await g.uplink.drain(60) for g in gateways]
        stop_uplinks.set()
        await asyncio.gather(*uplinks)
        return drained

    return asyncio.run(run())


def test_hub_replicas_seal_every_receipted_batch_once_through_kills_a_pause_and_restarts(tmp_path: Path) -> None:
    site = HubReplicas(tmp_path / "substation", N)
    gateways = [Gateway(site, tmp_path, "gw-a", first_hub=0), Gateway(site, tmp_path, "gw-b", first_hub=2)]
    events: list[str] = []
    try:
        for i in range(N):
            site.start(i)
        site.wait_ready(list(range(N)))

        async def faults() -> None:
            async def step(what: str, fn, *args, pause_s: float = 2.0) -> None:  # noqa: ANN001
                await asyncio.to_thread(fn, *args)
                events.append(what)
                await asyncio.sleep(pause_s)

            await asyncio.sleep(2.0)
            primary = await asyncio.to_thread(site.primary)
            await step(f"kill -9 primary {primary}", site.kill, primary)
            await step(f"restart {primary}", site.start, primary)
            backup = (await asyncio.to_thread(site.primary) + 1) % N
            await step(f"kill -9 backup {backup}", site.kill, backup)
            await step(f"restart {backup}", site.start, backup)
            paused = (backup + 1) % N
            await step(f"pause {paused}", site.pause, paused)
            await step(f"resume {paused}", site.resume, paused)

        drained = _stream_during(gateways, faults)
        assert all(drained), f"{[g.queue.stats() for g in gateways]} after {events}"
        total = sum(g.sealed for g in gateways)
        chain = site.wait_same_chain(list(range(N)), total)
        _check_verify_and_certificates(site, tmp_path)
    finally:
        site.stop_all()
    # Every batch the agents sent (and got receipts for: their queues are empty) is in exactly one block.
    sealed = [b for _, batches in chain for b in batches]
    assert len(sealed) == len(set(sealed)) == total, events
    receipts = sum(g.uplink.stats.receipts for g in gateways)
    assert receipts >= total
    for i in range(N):
        s = site.store(i)
        try:
            assert s.counts()[:2] == (total, 0)  # all stored, none unsealed
            head = s.block(s.head().height)
            assert head.quorum is not None and len(head.seals) >= 3
        finally:
            s.close()


def _gridtrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridtrace", *args], capture_output=True, text=True)


def _certificate_that_verifies(site: HubReplicas, replica: int, trust: Path, out: Path) -> dict:
    """MTR-gw-a's certificate for all time, pulled from `replica` and verified with `trust`."""
    issued = _gridtrace("cert", "pull", "--hub", site.hubs[replica], "--tls-ca", str(site.dir / "tls" / "ca.pem"),
                        "--meter", "MTR-gw-a", "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z",
                        "--output", str(out))
    assert issued.returncode == 0, issued.stderr
    ok = _gridtrace("cert", "verify", str(out), "--trust", str(trust))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    return json.loads(out.read_text())


def _check_verify_and_certificates(site: HubReplicas, tmp_path: Path) -> None:
    """Offline, after the run: the audit of a replica's database checks every block's commit
    votes against the replicas' keys, and a measurement certificate issued by one replica
    verifies with the trust file `hub trust` writes (quorum 3 of 4); a forged vote does not."""
    audit = _gridtrace("hub", "verify", "--config", str(site.hub_toml(1)))
    assert audit.returncode == 0, audit.stderr
    trust = tmp_path / "trust.json"
    assert _gridtrace("hub", "trust", "--config", str(site.hub_toml(2)), "--output", str(trust)).returncode == 0
    doc = json.loads(trust.read_text())
    assert doc["chains"]["sub-test"]["quorum"] == 3 and len(doc["chains"]["sub-test"]["replicas"]) == 4
    body = _certificate_that_verifies(site, 3, trust, tmp_path / "cert.json")
    block = body["certificate"]["blocks"][0] if "certificate" in body else body["blocks"][0]
    assert "quorum" in block
    sig = bytearray(bytes.fromhex(block["seals"][0]["signature"]))
    sig[0] ^= 1
    block["seals"][0]["signature"] = sig.hex()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(body))
    bad = _gridtrace("cert", "verify", str(forged), "--trust", str(trust))
    assert bad.returncode != 0 and "seals[0].signature" in bad.stdout + bad.stderr


def test_a_reserve_hub_replica_is_promoted_when_a_consensus_replica_dies_and_the_chain_survives_the_next(
    tmp_path: Path,
) -> None:
    """4 consensus hub replicas and a reserve. One consensus replica is killed for good: within
    a few checkpoints the others demote it and promote the reserve, without restarting anything.
    Then a second consensus replica dies: 3 of the 4 consensus replicas are still up, and the
    agents' batches are still all sealed, the same chain on every live replica."""
    site = HubReplicas(tmp_path / "substation", N, reserves=1)
    gw = Gateway(site, tmp_path, "gw-r", first_hub=0)
    try:
        for i in range(site.n):
            site.start(i)
        site.wait_ready(list(range(site.n)))

        async def run() -> tuple[bool, list[int]]:
            stop_uplink, stop_feed = asyncio.Event(), asyncio.Event()
            uplink = asyncio.create_task(gw.uplink.run(stop_uplink))
            feed = asyncio.create_task(_feed([gw], stop_feed))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(site.kill, 3)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the reserve votes
                state = await asyncio.to_thread(site.status, 0)
                if 4 in state["active"]:
                    break
                await asyncio.sleep(0.3)
            active = state["active"]
            await asyncio.to_thread(site.kill, 2)
            await asyncio.sleep(2.0)
            stop_feed.set()
            await feed
            drained = await gw.uplink.drain(60)
            stop_uplink.set()
            await uplink
            return drained, active

        drained, active = asyncio.run(run())
        assert 4 in active and 3 not in active, active
        assert drained, gw.queue.stats()
        live = [0, 1, 4]
        chain = site.wait_same_chain(live, gw.sealed)
        assert site.status(0)["active"] == site.status(4)["active"]
    finally:
        site.stop_all()
    sealed = [b for _, batches in chain for b in batches]
    assert len(sealed) == len(set(sealed)) == gw.sealed


def test_with_custody_two_replicas_store_each_batch_the_others_seal_it_by_its_header_and_fetch_it_for_a_certificate(
    tmp_path: Path,
) -> None:
    """payload_copies = 2 (f+1): a batch's entries are stored by the replica its agent sent it
    to and one custodian; the other two check its gateway-signed header, vote on the word of
    the two, and write it into the block as a header-only row. One replica is killed and
    restarted meanwhile. Then every receipted batch is in one block of one chain everywhere,
    stored by at least 2 replicas; `hub verify` passes on every replica; and a certificate
    pulled from a replica that held some of the meter's batches by header only is complete
    (it fetched them first) and verifies."""
    site = HubReplicas(tmp_path / "substation", N, payload_copies=2)
    gateways = [Gateway(site, tmp_path, "gw-a", first_hub=0), Gateway(site, tmp_path, "gw-b", first_hub=2)]
    try:
        for i in range(N):
            site.start(i)
        site.wait_ready(list(range(N)))

        async def faults() -> None:
            await asyncio.sleep(2.0)
            await asyncio.to_thread(site.kill, 3)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(site.start, 3)
            await asyncio.sleep(2.0)

        drained = _stream_during(gateways, faults)
        assert all(drained), [g.queue.stats() for g in gateways]
        total = sum(g.sealed for g in gateways)
        chain = site.wait_same_chain(list(range(N)), total)
        sealed = [b for _, batches in chain for b in batches]
        assert len(sealed) == len(set(sealed)) == total

        copies = dict.fromkeys(sealed, 0)
        elsewhere: dict[int, set[bytes]] = {}
        for i in range(N):
            s = site.store(i)
            try:
                stored = s.batches_by_hash(sealed)
                ids = {b.id: h for h, b in stored.items()}
                elsewhere[i] = {ids[x] for x in s.header_only(list(ids))}
                for h in stored:
                    copies[h] += h not in elsewhere[i]
            finally:
                s.close()
        assert min(copies.values()) >= 2, sorted(copies.values())[:5]
        assert sum(len(e) for e in elsewhere.values()) >= total // 2  # custody did spare copies

        for i in range(N):
            audit = _gridtrace("hub", "verify", "--config", str(site.hub_toml(i)))
            assert audit.returncode == 0, audit.stdout + audit.stderr
        gw_a = set()
        s = site.store(0)
        try:
            gw_a = {b.hash for b in s.batches_by_hash(sealed).values() if b.gateway_id == "gw-a"}
        finally:
            s.close()
        asked = max(range(N), key=lambda i: len(elsewhere[i] & gw_a))
        assert elsewhere[asked] & gw_a
        verified = _gridtrace("hub", "verify", "--config", str(site.hub_toml(asked)))
        assert "by header and signature only" in verified.stdout
        trust = tmp_path / "trust.json"
        assert _gridtrace("hub", "trust", "--config", str(site.hub_toml(0)), "--output", str(trust)).returncode == 0
        body = _certificate_that_verifies(site, asked, trust, tmp_path / "cert.json")
        doc = body.get("certificate", body)
        assert len(doc["entries"]) == gateways[0].reading  # every reading of the meter, none left out
        s = site.store(asked)
        try:
            ids = {b.id: h for h, b in s.batches_by_hash(sorted(gw_a)).items()}
            assert not {ids[x] for x in s.header_only(list(ids))}  # fetched and stored for the certificate
        finally:
            s.close()
    finally:
        site.stop_all()
