"""The hub's ingest over real gRPC: receipts only for durable batches, rejections with fitting
status codes, nothing stored from a rejected batch, and the hub keeps serving."""

from __future__ import annotations

import struct
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from edge.uplink import ReceiptError, check_receipt
from hub.storage.schema import batches
from protos import ingest_pb2, ingest_pb2_grpc
from protos.canonical import batch_hash, decode_batch_header, encode_batch_header
from protos.wire import header_from_pb

from hubharness import GatewaySim, RunningHub, init_hub, reading_layout, register_gateway, replace_entry
from pgserver import empty_database

# The tests that matter most also run with the hub on a real PostgreSQL server.
both_databases = pytest.mark.parametrize("hub", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture()
def hub(request, tmp_path):
    with empty_database(getattr(request, "param", "sqlite"), request, tmp_path) as url:
        cfg = init_hub(tmp_path / "hub", database_url=url)
        gw = GatewaySim.new()
        register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
        with RunningHub(cfg) as running:
            running.gw = gw
            yield running


def stream(hub: RunningHub, messages, timeout: float = 10.0):
    with grpc.insecure_channel(hub.address) as ch:
        return list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(messages), timeout=timeout))


def rejected(hub: RunningHub, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stream(hub, messages)
    return info.value


def counts(hub: RunningHub) -> tuple[int, int]:
    store = hub.store()
    try:
        with store.engine.connect() as c:
            n_batches = c.execute(select(func.count()).select_from(batches)).scalar_one()
        return n_batches, sum(1 for _ in store.iter_entries())
    finally:
        store.close()


@both_databases
def test_receipts_are_signed_and_name_the_stored_batch(hub):
    msgs = [hub.gw.batch(5), hub.gw.batch(7)]
    receipts = stream(hub, msgs)
    assert [r.batch_seq for r in receipts] == [1, 2]
    for msg, r in zip(msgs, receipts):
        digest = batch_hash(header_from_pb(msg.header))
        check_receipt(r, hub.gw.gateway_id, msg.header.seq, digest, hub.public_key())
        assert not r.duplicate
    assert counts(hub) == (2, 12)
    stored = hub.store().find_batch(hub.gw.gateway_id, 2)
    assert decode_batch_header(stored.header).entry_count == 7


def test_a_receipt_with_a_changed_field_is_refused_by_the_agent(hub):
    msg = hub.gw.batch(3)
    (r,) = stream(hub, [msg])
    digest = batch_hash(header_from_pb(msg.header))
    r.stored_ns += 1
    with pytest.raises(ReceiptError, match="signature"):
        check_receipt(r, hub.gw.gateway_id, 1, digest, hub.public_key())
    with pytest.raises(ReceiptError, match="hash"):
        check_receipt(r, hub.gw.gateway_id, 1, bytes(32), hub.public_key())


@both_databases
def test_resent_batch_is_acknowledged_again_and_stored_once(hub):
    first = hub.gw.batch(4)
    second = hub.gw.batch(4)
    assert [r.duplicate for r in stream(hub, [first])] == [False]
    # The agent lost the receipt and sends both again, then a new one, on a new stream.
    receipts = stream(hub, [first, second, hub.gw.batch(2)])
    assert [(r.batch_seq, r.duplicate) for r in receipts] == [(1, True), (2, False), (3, False)]
    assert receipts[0].batch_hash == batch_hash(header_from_pb(first.header))
    assert counts(hub) == (3, 10)


def test_resend_within_one_stream_before_commit(hub):
    msg = hub.gw.batch(3)
    receipts = stream(hub, [msg, msg])
    assert [(r.batch_seq, r.duplicate) for r in receipts] == [(1, False), (1, True)]
    assert counts(hub) == (1, 3)


@both_databases
def test_bad_signature_is_unauthenticated_and_nothing_is_stored(hub):
    good = hub.gw.batch(3)
    bad = hub.gw.batch(3, advance=False)
    bad.signature = bytes([bad.signature[0] ^ 1]) + bad.signature[1:]
    err = rejected(hub, [good, bad])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in err.details() and "batch 2" in err.details()
    assert counts(hub) == (1, 3)  # the good batch before it stays stored
    # the hub keeps serving: the correctly signed batch 2 is accepted afterwards
    assert [r.batch_seq for r in stream(hub, [hub.gw.batch(2)])] == [2]


@both_databases
def test_changed_reading_breaks_the_root(hub):
    msg = hub.gw.batch(3)
    # still a well-formed reading, one value's last mantissa bit flipped
    replace_entry(msg, 1, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    err = rejected(hub, [msg])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entries_root" in err.details()
    assert counts(hub) == (0, 0)


def test_unknown_gateway_is_unauthenticated(hub):
    stranger = GatewaySim.new("gw-stranger")
    err = rejected(hub, [stranger.batch(2)])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "gw-stranger" in err.details() and "not registered" in err.details()
    assert counts(hub) == (0, 0)


def test_unknown_key_of_a_known_gateway_is_unauthenticated(hub):
    impostor = GatewaySim.new(hub.gw.gateway_id)
    err = rejected(hub, [impostor.batch(2)])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert impostor.signer.key_id in err.details()


def test_gateway_registered_while_running_is_accepted(hub, tmp_path):
    late = GatewaySim.new("gw-late", meter_id="MTR-9")
    register_gateway(hub.cfg, late.gateway_id, late.signer, tmp_path)
    time.sleep(1.1)  # key reloads are rate-limited to one a second
    assert [r.batch_seq for r in stream(hub, [late.batch(2)])] == [1]


def test_out_of_order_batch_is_a_failed_precondition(hub):
    stream(hub, [hub.gw.batch(2)])
    hub.gw.batch(2)  # batch 2 never sent
    err = rejected(hub, [hub.gw.batch(2)])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected 2" in err.details()
    assert counts(hub) == (1, 2)


def test_first_batch_must_be_seq_1(hub):
    hub.gw.seq = 4
    err = rejected(hub, [hub.gw.batch(2)])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


@both_databases
def test_fork_same_seq_other_content_is_rejected(hub):
    saved = (hub.gw.seq, hub.gw.prev_hash, hub.gw.reading_seq)
    stream(hub, [hub.gw.batch(2)])
    hub.gw.seq, hub.gw.prev_hash, hub.gw.reading_seq = saved
    err = rejected(hub, [hub.gw.batch(3)])
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "fork" in err.details()
    assert counts(hub) == (1, 2)


def test_fork_wrong_prev_hash_is_rejected(hub):
    stream(hub, [hub.gw.batch(2)])
    hub.gw.prev_hash = bytes(32)
    err = rejected(hub, [hub.gw.batch(2)])
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "prev_hash" in err.details()


def _patch(field: str, value: bytes, skip: int = 0):
    """Overwrite one field of entry 1, from `skip` bytes into it, with `value`."""
    def change(body: bytes) -> bytes:
        at = reading_layout(body)[field] + skip
        return body[:at] + value + body[at + len(value):]
    return lambda m: replace_entry(m, 1, change)


def _swap_quantity_names(body: bytes) -> bytes:
    at = reading_layout(body)["names"] + 2
    n1 = struct.unpack_from(">H", body, at)[0]
    n2 = struct.unpack_from(">H", body, at + 2 + n1)[0]
    first, second = body[at : at + 2 + n1], body[at + 2 + n1 : at + 4 + n1 + n2]
    return body[:at] + second + first + body[at + 4 + n1 + n2 :]


def _contract_record(body: bytes) -> bytes:
    """A contract record's bytes around any body (the record class refuses a bad one)."""
    from protos.canonical import TAG_CONTRACT_RECORD

    def s(v: bytes) -> bytes:
        return struct.pack(">H", len(v)) + v

    return (bytes([len(TAG_CONTRACT_RECORD)]) + TAG_CONTRACT_RECORD + s(b"MTR-1") + struct.pack(">qq", 0, 1)
            + s(b"carbon-flow/1") + s(b"meter-interval") + struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda m: setattr(m.header, "prev_hash", b"\x00" * 31), ["prev_hash"]),
        (_patch("values", struct.pack(">d", float("nan"))), ["entry 1", "value of energy_import", "finite"]),
        (_patch("values", struct.pack(">d", float("-inf"))), ["entry 1", "value of energy_import", "finite"]),
        (_patch("meter_id", b"#", skip=2), ["entry 1", "meter_id", "not a valid identifier"]),
        (_patch("meter_id", b"\xff", skip=3), ["entry 1", "meter_id", "not UTF-8"]),
        (_patch("seq", bytes(8)), ["entry 1", "seq"]),
        (_patch("seq", b"\x80" + bytes(7)), ["entry 1", "seq"]),  # 2^63: beyond what databases hold
        (_patch("clock", b"\x07"), ["entry 1", "clock"]),
        (_patch("quality", b"\x00\x00\x01\x00"), ["entry 1", "quality", "undefined flag bits"]),
        (lambda m: replace_entry(m, 1, _swap_quantity_names), ["entry 1", "sorted"]),
        (lambda m: replace_entry(m, 1, lambda b: b[:-3]), ["entry 1", "values", "truncated"]),
        (lambda m: replace_entry(m, 1, lambda b: b + b"\x00"), ["entry 1", "trailing bytes"]),
        (lambda m: replace_entry(m, 1, lambda b: b""), ["entry 1", "neither a reading nor a gap"]),
        (lambda m: replace_entry(m, 1, lambda b: b[:5] + b"X" + b[6:]), ["entry 1", "neither a reading nor a gap"]),
        (lambda m: replace_entry(m, 1, lambda b: _contract_record(b'{"b":1,"a":2}')),
         ["entry 1", "contract record", "not canonical JSON"]),
        (lambda m: m.ClearField("packed_entries"), ["no entries"]),
        (lambda m: m.packed_entries.CopyFrom(m.packed_entries.__class__(
            bodies=m.packed_entries.bodies, offsets=m.packed_entries.offsets[:-4] + b"\xff\xff\xff\xff",
            names=m.packed_entries.names,
        )), ["packed entries: offsets do not cover"]),
        (lambda m: m.entry_bytes.append(b"x"), ["both packed_entries and entry_bytes"]),
    ],
)
def test_malformed_batch_is_invalid_argument_and_what_was_accepted_stays(hub, damage, fragments):
    good = hub.gw.batch(2)
    msg = hub.gw.batch(3, advance=False)
    damage(msg)
    err = rejected(hub, [good, msg])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for fragment in fragments:
        assert fragment in err.details(), err.details()
    assert counts(hub) == (1, 2)  # the batch accepted before it stays stored
    assert [r.batch_seq for r in stream(hub, [hub.gw.batch(1)])] == [2]


def test_a_changed_header_is_a_bad_signature_before_its_entries_are_looked_at(hub):
    """The signature is checked first: without the gateway's key nobody makes the hub unpack
    and hash entries. A header the gateway did sign but that miscounts its entries is malformed."""
    msg = hub.gw.batch(3, advance=False)
    msg.header.entry_count = 99
    err = rejected(hub, [msg])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "signature does not verify" in err.details()
    msg.signature = hub.gw.signer.sign(encode_batch_header(header_from_pb(msg.header)))
    err = rejected(hub, [msg])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "header says 99 entries, got 3" in err.details()
    assert counts(hub) == (0, 0)


def test_an_agent_older_than_wire_v3_is_still_served(hub):
    """Agents before 0.2 list each entry's bytes (wire v2); the hub packs them itself and
    stores exactly what it stores for a packed batch."""
    old, new = hub.gw.batch(3, wire=2), hub.gw.batch(3)
    assert old.entry_bytes and not old.HasField("packed_entries")
    assert [r.batch_seq for r in stream(hub, [old, new])] == [1, 2]
    store = hub.store()
    try:
        stored = [store.find_batch(hub.gw.gateway_id, seq) for seq in (1, 2)]
        bodies = [store.batch_bodies(b.id) for b in stored]
    finally:
        store.close()
    assert [len(b) for b in bodies] == [3, 3]
    assert bodies[0] == list(old.entry_bytes)


@both_databases
def test_blocks_are_sealed_and_status_reports_them(hub):
    stream(hub, [hub.gw.batch(3) for _ in range(4)])
    deadline = time.monotonic() + 10
    with grpc.insecure_channel(hub.address) as ch:
        query = ingest_pb2_grpc.QueryStub(ch)
        while time.monotonic() < deadline:
            st = query.GetStatus(ingest_pb2.StatusRequest())
            if st.batches_unsealed == 0 and st.height > 0:
                break
            time.sleep(0.1)
        assert st.height >= 1 and st.batches_stored == 4 and st.entries_stored == 12
        assert list(st.gateways) == [hub.gw.gateway_id]
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as bad:
            query.GetCertificate(ingest_pb2.CertificateRequest(meter_id="MTR-1", from_ns=10, to_ns=5))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as missing:
            query.GetCertificate(ingest_pb2.CertificateRequest(meter_id="MTR-404", from_ns=0, to_ns=2**62))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_shutdown_seals_everything_receipted(tmp_path, database_url):
    cfg = init_hub(tmp_path / "hub", block_interval=60.0, database_url=database_url)
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    with RunningHub(cfg) as running:
        receipts = stream(running, [gw.batch(2) for _ in range(3)])
        assert len(receipts) == 3
    store = running.store()
    assert store.counts() == (3, 0, 6)
    assert store.head().height == 1


def test_tls_is_required_by_default(tmp_path):
    cfg = init_hub(tmp_path / "hub", insecure=False)
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    with RunningHub(cfg) as running:
        ca = (tmp_path / "hub" / "tls" / "ca.pem").read_bytes()
        with grpc.secure_channel(running.address, grpc.ssl_channel_credentials(ca)) as ch:
            receipts = list(ingest_pb2_grpc.IngestStub(ch).Stream(iter([gw.batch(2)]), timeout=10))
        assert [r.batch_seq for r in receipts] == [1]
        with pytest.raises(grpc.RpcError):
            stream(running, [gw.batch(2)], timeout=3)
        # a CA that did not sign the hub's certificate is refused
        from hub.tls import create_tls_files

        other_ca, _, _ = create_tls_files(tmp_path / "other", ["localhost"], "other")
        with grpc.secure_channel(running.address, grpc.ssl_channel_credentials(other_ca.read_bytes())) as ch:
            with pytest.raises(grpc.RpcError) as info:
                list(ingest_pb2_grpc.IngestStub(ch).Stream(iter([gw.batch(2, advance=False)]), timeout=3))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
