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


def test_a_gateway_fork_gets_one_batch_sealed_never_both() -> None:
    """A gateway that signed two batches with one sequence number (sent to two replicas): a
    block takes one, a proposal with both is refused (a replica could store only one of them,
    and its block writer would wait for ever), and the other never follows later."""
    b1 = batch(1, ZERO_HASH)
    fork = seal_batch(GATEWAY, "gw-1", 1, ZERO_HASH, [b"other entry"], [1_001], 2_001)
    led = ledger()
    assert led.learn(b1.hash, forwarded(b1)) and led.learn(fork.hash, forwarded(fork))
    chosen = led.select((b1.hash, fork.hash), 10)
    assert len(chosen) == 1
    both = (b1.hash, fork.hash)
    header = led.build(1, bytes(32), (b1.hash,), 0.0)
    why = led.check(Proposal(1, bytes(32), both, header), 0.0)
    assert why is not None and "number is taken" in why
    p = Proposal(1, bytes(32), (b1.hash,), led.build(1, bytes(32), (b1.hash,), 0.0))
    assert led.check(p, 0.0) is None
    led.decided(p)
    assert led.select((fork.hash,), 10) == ()
    assert led.superseded(fork.hash) and not led.superseded(b1.hash)


def test_the_core_stops_waiting_for_a_gateways_fork_once_its_twin_is_decided() -> None:
    """Replica 1 holds the fork a gateway sent it; the other three decide the twin. The fork
    leaves replica 1's pending batches, so it does not change views over it for ever."""
    from hub.consensus.config import ConsensusConfig
    from hub.consensus.core import Replica
    from hub.consensus.keys import SimulatedReplicaKeys, sign_message
    from hub.consensus.messages import Commit, PrePrepare

    b1 = batch(1, ZERO_HASH)
    fork = seal_batch(GATEWAY, "gw-1", 1, ZERO_HASH, [b"other entry"], [1_001], 2_001)
    secrets = {i: bytes([i]) * 32 for i in range(4)}
    led = ledger()
    led.hold([known_batch(fork.hash, encode_batch_header(fork.header), fork.signature)])
    r = Replica(ConsensusConfig(n=4), SimulatedReplicaKeys(1, secrets), led)
    r.submit([fork.hash], 0.0)
    assert fork.hash in r.pending
    assert led.learn(b1.hash, forwarded(b1))
    p = Proposal(1, bytes(32), (b1.hash,), led.build(1, bytes(32), (b1.hash,), 0.0))
    r.receive(sign_message(SimulatedReplicaKeys(0, secrets), PrePrepare(0, p)), 0.1)
    for i in (0, 2, 3):  # the others hold the twin and commit it
        r.receive(sign_message(SimulatedReplicaKeys(i, secrets), Commit(0, 1, p.digest)), 0.2)
    assert r.height == 1 and fork.hash not in r.pending
