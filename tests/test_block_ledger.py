"""The hub's ledger for the consensus core (hub/chain/ledger.py), with custody: batches known
by their gateway-signed header only are checked before they count, build and check block
headers like stored ones, and are handed to the block writer once decided."""

from __future__ import annotations

from protos.batch import BatchError, check_header_signature, seal_batch
from protos.canonical import encode_batch_header
from protos.merkle import CompactRange
from protos.records import ZERO_HASH, BatchHeader
from protos.signing import Signer

from hub.chain.ledger import BlockLedger, known_batch
from hub.consensus.messages import Proposal

GATEWAY = Signer.generate()
OTHER = Signer.generate()


def batch(seq: int, prev: bytes, signer: Signer = GATEWAY, gateway: str = "gw-1"):
    return seal_batch(signer, gateway, seq, prev, [b"entry-%d" % seq], [1_000 + seq], 2_000 + seq)


def forwarded(b) -> bytes:  # noqa: ANN001
    return encode_batch_header(b.header) + b.signature


def gateway_check(header: BatchHeader, signature: bytes) -> bool:
    if header.gateway_id != "gw-1" or header.key_id != GATEWAY.key_id:
        return False
    try:
        check_header_signature(header, signature, GATEWAY.public_key)
    except BatchError:
        return False
    return True


def ledger() -> BlockLedger:
    return BlockLedger("sub", None, CompactRange(), clock_ns=lambda: 10**18, signed_by_gateway=gateway_check)


def test_a_forwarded_header_is_learnt_only_if_it_is_the_batchs_and_signed_by_its_gateway() -> None:
    b1 = batch(1, ZERO_HASH)
    led = ledger()
    assert not led.learn(b1.hash, b"")
    assert not led.learn(b1.hash, b"\x00" * 100)  # does not decode
    assert not led.learn(batch(2, ZERO_HASH).hash, forwarded(b1))  # another batch's header
    forged = encode_batch_header(b1.header) + bytes(64)
    assert not led.learn(b1.hash, forged)  # not the gateway's signature
    stranger = batch(1, ZERO_HASH, signer=OTHER)
    assert not led.learn(stranger.hash, forwarded(stranger))  # a key the hub does not have for gw-1
    assert not led.knows(b1.hash)
    assert led.learn(b1.hash, forwarded(b1))
    assert led.knows(b1.hash) and not led.holds(b1.hash)
    assert led.learn(b1.hash, forwarded(b1)) and not led.learn(b1.hash, forged)  # known: must be the same bytes
    assert led.header(b1.hash) == forwarded(b1)


def test_known_and_held_batches_make_the_same_block_header_and_decided_known_ones_go_to_the_writer() -> None:
    b1 = batch(1, ZERO_HASH)
    b2 = batch(2, b1.hash)
    holder, custodian_less = ledger(), ledger()
    holder.hold([known_batch(b1.hash, encode_batch_header(b1.header), b1.signature),
                 known_batch(b2.hash, encode_batch_header(b2.header), b2.signature)])
    assert custodian_less.learn(b2.hash, forwarded(b2)) and custodian_less.learn(b1.hash, forwarded(b1))
    # Chain order from the headers alone.
    assert custodian_less.select((b2.hash, b1.hash), 10) == (b1.hash, b2.hash)
    header = holder.build(1, bytes(32), (b1.hash, b2.hash), 0.0)
    p = Proposal(1, bytes(32), (b1.hash, b2.hash), header)
    assert custodian_less.check(p, 0.0) is None
    assert custodian_less.check(Proposal(1, bytes(32), (b2.hash, b1.hash), header), 0.0) is not None
    custodian_less.decided(p)
    assert set(custodian_less.decided_known) == {b1.hash, b2.hash}
    assert custodian_less.gateway_heads["gw-1"] == (2, b2.hash)
    assert not custodian_less.knows(b1.hash) and not custodian_less.decided_unheld
