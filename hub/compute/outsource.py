"""The data owner's side: send a masked task to two providers, check, escalate, settle.

Seed 002, section 4.3, with the owner's own residual check added (one sparse product):
1. Two providers get differently masked copies. Each answer is checked: signed by the provider's
   key, the right size, and, unmasked, it must solve the task. If both pass and agree, accept.
2. Otherwise a third provider gets a third copy. Two passing answers that agree are accepted.
3. Otherwise the grid's own data centre solves the task; its answer is accepted.
Every provider whose answer is not the accepted one (wrong, random, late, unsigned or absent)
is wrong: it is not paid, it pays for the computation that replaced it (the third provider's fee,
or the data centre's cost and the correct providers' fees), and its second wrong answer puts it
on the blacklist for three cycles (`ProviderBook`). The `ComputeRecord` says all of it, for the
chain.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

import grpc
import numpy as np
import scipy.sparse as sp

from hub.compute.book import ProviderBook
from hub.compute.masking import (
    Mask,
    MaskedTask,
    Matrix,
    agree,
    mask,
    residual_ok,
    unmask,
)
from hub.compute.provider import SOLVE_METHOD, sparse_lu_solve
from hub.compute.wire import (
    MAX_MESSAGE,
    WireError,
    answer_payload,
    answer_statement,
    answer_x,
    matrix_digest,
    task_digest,
    task_message,
)
from protos import compute_pb2 as cpb
from protos.signing import PublicKey

log = logging.getLogger("gridtrace.compute")

DATA_CENTRE = "data-centre"


class OutsourcingError(RuntimeError):
    """The task could not be solved at all; the message says why."""


@dataclass(frozen=True)
class ProviderEndpoint:
    name: str
    address: str  # host:port
    public_key: PublicKey  # its answers must be signed by this key
    fee: float = 1.0  # what the grid pays per correct answer
    tls_ca: bytes | None = None  # PEM of the CA of its TLS certificate; None: plaintext (development)


@dataclass(frozen=True)
class Attempt:
    provider: str
    stage: int  # 1: the first two; 2: the third provider
    outcome: str  # "answered", "failed-check", "no-answer", "bad-signature"
    detail: str = ""
    answer_sha256: str = ""  # of the unmasked answer's bytes, when there was one


@dataclass(frozen=True)
class ComputeRecord:
    """One outsourced task, as it goes on chain."""

    task_sha256: str  # of the unmasked task (A and B): what was computed, without revealing it
    cycle: int
    attempts: tuple[Attempt, ...]
    accepted_by: tuple[str, ...]  # the providers whose agreeing answers were accepted, or ("data-centre",)
    wrong: tuple[str, ...]
    payments: dict[str, float] = field(default_factory=dict)  # what the grid pays each
    penalties: dict[str, float] = field(default_factory=dict)  # what each wrong provider pays
    blacklisted_until: dict[str, int] = field(default_factory=dict)  # bans this task started

    def to_json(self) -> dict:
        return {
            "task_sha256": self.task_sha256, "cycle": self.cycle,
            "attempts": [a.__dict__ for a in self.attempts], "accepted_by": list(self.accepted_by),
            "wrong": list(self.wrong), "payments": dict(sorted(self.payments.items())),
            "penalties": dict(sorted(self.penalties.items())),
            "blacklisted_until": dict(sorted(self.blacklisted_until.items())),
        }


def unmasked_task_digest(a: sp.spmatrix, b: Matrix) -> str:
    """SHA-256 naming the unmasked task: A's digest and B's, so the record says what was solved
    without holding it."""
    return hashlib.sha256(f"{a.shape[0]}:{matrix_digest(sp.csc_matrix(a))}:{matrix_digest(b)}".encode()).hexdigest()


@dataclass
class _Copy:
    provider: ProviderEndpoint
    stage: int
    mask: Mask
    digest: bytes
    future: grpc.Future
    x: Matrix | None = None
    attempt: Attempt | None = None


class Outsourcer:
    """Solves A X = B through providers; keeps the book of wrong answers and the records."""

    def __init__(self, providers: Sequence[ProviderEndpoint], book: ProviderBook | None = None,
                 timeout_s: float = 30.0, data_centre_cost: float = 3.0,
                 data_centre: Callable[[MaskedTask], Matrix] = sparse_lu_solve,
                 rng: np.random.Generator | None = None) -> None:
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names repeat: {names}")
        self.providers = list(providers)
        self.book = book or ProviderBook()
        self.timeout_s = timeout_s
        self.data_centre_cost = data_centre_cost
        self.data_centre = data_centre
        self.rng = rng or np.random.default_rng(secrets.randbits(128))
        self.records: list[ComputeRecord] = []
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _solve_call(self, p: ProviderEndpoint) -> grpc.UnaryUnaryMultiCallable:
        """The provider's Solve, taking the task's bytes as they were digested (serialised once),
        on a channel kept open between tasks (a TLS handshake per task cost 14 ms)."""
        ch = self._channels.get(p.name)
        if ch is None:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                       ("grpc.max_send_message_length", MAX_MESSAGE)]
            ch = (grpc.secure_channel(p.address, grpc.ssl_channel_credentials(p.tls_ca), options=options)
                  if p.tls_ca else grpc.insecure_channel(p.address, options=options))
            self._channels[p.name] = ch
        return ch.unary_unary(SOLVE_METHOD, request_serializer=None, response_deserializer=cpb.SolveAnswer.FromString)

    def eligible(self, cycle: int) -> list[ProviderEndpoint]:
        """This cycle's providers not blacklisted, in an order that rotates with the cycle."""
        ok = sorted((p for p in self.providers if self.book.eligible(p.name, cycle)), key=lambda p: p.name)
        if not ok:
            return ok
        r = cycle % len(ok)
        return ok[r:] + ok[:r]

    def solve(self, a: sp.spmatrix, b: Matrix, cycle: int) -> Matrix:
        """X with A X = B (sparse X for a sparse B; a vector for a vector B), outsourced."""
        a = sp.csc_matrix(a)
        n = a.shape[0]
        b2 = sp.csc_matrix(b) if sp.issparse(b) else np.asarray(b, dtype=float).reshape(n, -1)
        queue = self.eligible(cycle)
        copies = [self._send(p, a, b2, stage=1) for p in queue[:2]]
        rest = queue[2:]
        for c in copies:
            self._collect(c, a, b2)
        accepted = self._agreeing(copies)
        if accepted is None and rest:
            third = self._send(rest[0], a, b2, stage=2)
            self._collect(third, a, b2)
            copies.append(third)
            accepted = self._agreeing(copies)
        if accepted is not None:
            x, right = accepted[0].x, [c.provider.name for c in accepted]
            by = tuple(right)
        else:
            log.warning("cycle %d: providers %s gave no two agreeing answers; the data centre computes",
                        cycle, [c.provider.name for c in copies])
            x = self.data_centre(MaskedTask(a, b2))
            if sp.issparse(b2):
                x = sp.csc_matrix(x)
            if not residual_ok(a, x, b2):
                raise OutsourcingError("the data centre's own answer fails the residual check: the task is singular "
                                       "or badly conditioned")
            right = [c.provider.name for c in copies if c.x is not None and agree(c.x, x)]
            by = (DATA_CENTRE,)
        self._settle(a, b2, cycle, copies, right, by, stage3=accepted is None)
        return x if sp.issparse(b) or np.ndim(b) > 1 else x[:, 0]

    def _send(self, p: ProviderEndpoint, a: sp.csc_matrix, b: Matrix, stage: int) -> _Copy:
        task, m = mask(a, b, self.rng)
        raw = task_message(secrets.token_hex(8), task).SerializeToString(deterministic=True)
        future = self._solve_call(p).future(raw, timeout=self.timeout_s)
        return _Copy(p, stage, m, task_digest(raw), future)

    def _collect(self, c: _Copy, a: sp.csc_matrix, b: Matrix) -> None:
        name, n, k = c.provider.name, b.shape[0], b.shape[1]
        try:
            answer = c.future.result()
        except grpc.RpcError as exc:
            c.attempt = Attempt(name, c.stage, "no-answer", f"{exc.code().name}: {exc.details()}")
            return
        if answer.provider_id != c.provider.public_key.key_id or not c.provider.public_key.verify(
                answer.signature, answer_statement(c.digest, answer_payload(answer))):
            c.attempt = Attempt(name, c.stage, "bad-signature", f"not signed by key {c.provider.public_key.key_id}")
            return
        try:
            x = unmask(c.mask, answer_x(answer, n, k))
        except (WireError, ValueError) as exc:
            c.attempt = Attempt(name, c.stage, "failed-check", str(exc))
            return
        digest = matrix_digest(x)
        if not residual_ok(a, x, b):
            c.attempt = Attempt(name, c.stage, "failed-check", "unmasked, it does not solve the task", digest)
            return
        c.x, c.attempt = x, Attempt(name, c.stage, "answered", "", digest)

    @staticmethod
    def _agreeing(copies: list[_Copy]) -> list[_Copy] | None:
        good = [c for c in copies if c.x is not None]
        for i, c in enumerate(good):
            group = [c] + [d for d in good[i + 1:] if agree(c.x, d.x)]
            if len(group) >= 2:
                return group
        return None

    def _settle(self, a: sp.csc_matrix, b: Matrix, cycle: int, copies: list[_Copy], right: list[str],
                by: tuple[str, ...], stage3: bool) -> None:
        fees = {c.provider.name: c.provider.fee for c in copies}
        wrong = [c.provider.name for c in copies if c.provider.name not in right]
        payments = {name: fees[name] for name in right}
        penalties: dict[str, float] = {}
        if wrong:
            # what replaced the wrong answers: the third provider, or the data centre and those who were right
            third = [c.provider.name for c in copies if c.stage == 2 and c.provider.name in right]
            owed = (self.data_centre_cost + sum(payments.values())) if stage3 else sum(fees[t] for t in third)
            penalties = {name: owed / len(wrong) for name in wrong}
        if stage3:
            payments[DATA_CENTRE] = self.data_centre_cost
        banned: dict[str, int] = {}
        for name in wrong:
            before = self.book.blacklisted_until.get(name)
            self.book = self.book.after_wrong(name, cycle)
            if self.book.blacklisted_until.get(name) != before:
                banned[name] = self.book.blacklisted_until[name]
        record = ComputeRecord(unmasked_task_digest(a, b), cycle, tuple(c.attempt for c in copies), by,
                               tuple(wrong), payments, penalties, banned)
        if wrong:
            log.warning("cycle %d: wrong answers from %s (%s); accepted from %s", cycle, ", ".join(wrong),
                        "; ".join(f"{c.attempt.provider}: {c.attempt.outcome}" for c in copies), ", ".join(by))
        self.records.append(record)
