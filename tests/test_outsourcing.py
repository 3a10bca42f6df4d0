"""Outsourced carbon computation: masking that hides the task and unmasks exactly, providers on
loopback gRPC that answer honestly, wrongly, randomly, with another key or never, and the
escalation of seed 002 (third provider, then the data centre) with its payments, penalties and
three-cycle blacklist."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from hub.compute.book import ProviderBook
from hub.compute.masking import agree, mask, residual_ok, unmask
from hub.compute.outsource import DATA_CENTRE, Outsourcer, ProviderEndpoint
from hub.compute.provider import sparse_lu_solve, start_provider
from hub.compute.wire import task_message
from hub.contracts.carbon.emission import parse_factors
from hub.contracts.carbon.flow import carbon_flow
from hub.contracts.carbon.tracing import trace
from protos import compute_pb2 as cpb
from protos import compute_pb2_grpc as cgrpc
from protos.signing import Signer
from tests.test_carbon_flow import THREE_NODES, snapshot


def system(n: int = 60, seed: int = 1) -> tuple[sp.csc_matrix, np.ndarray]:
    """A carbon-like system: unit diagonal, non-positive off-diagonal shares of the outflow."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(np.tril(rng.random((n, n)) < 0.08, k=-1))
    b = sp.coo_matrix((-rng.uniform(0.05, 0.3, len(rows)), (rows, cols)), shape=(n, n)).tocsc()
    return (sp.identity(n, format="csc") + b).tocsc(), rng.uniform(0, 2, (n, 3))


def test_a_masked_task_hides_the_values_and_unmasks_to_the_exact_solution():
    a, b = system()
    rng = np.random.default_rng(5)
    task, m = mask(a, b, rng)
    assert not np.isin(b, task.rhs).any()  # no right-hand side value leaves as it is
    assert not np.allclose(task.matrix.diagonal(), 1.0)  # the unit diagonal is scaled away
    assert task.matrix.nnz == a.nnz  # still sparse
    x = spla.spsolve(a, b)
    got = unmask(m, spla.splu(task.matrix).solve(task.rhs))
    assert np.abs(got - x).max() < 1e-12 * np.abs(x).max()
    other, m2 = mask(a, b, rng)
    assert not np.array_equal(m.perm, m2.perm) and not np.allclose(other.rhs, task.rhs)
    assert residual_ok(a, got, b)
    assert not residual_ok(a, got * (1 + 1e-6), b)
    assert not residual_ok(a, got + np.where(np.arange(len(got))[:, None] == 7, 1e-5, 0.0), b)
    assert not residual_ok(a, np.full_like(got, np.nan), b)


def test_a_sparse_task_hides_each_source_among_decoys_and_its_answer_stays_sparse():
    from hub.compute.masking import DECOYS, sparse_answer

    a, _ = system(n=200, seed=3)
    b = sp.csc_matrix((np.full(5, 2.0), ([3, 50, 90, 120, 199], range(5))), shape=(200, 5))  # one source each
    task, m = mask(a, b, np.random.default_rng(9))
    assert sp.issparse(task.rhs)
    assert (np.diff(task.rhs.indptr) >= DECOYS).all()  # the source's entry is one of many
    assert not np.isin(b.data, task.rhs.data).any()
    x_masked = sparse_answer(spla.splu(task.matrix).solve(task.rhs.toarray()))
    x = unmask(m, x_masked)
    want = spla.splu(a).solve(b.toarray())
    assert sp.issparse(x) and np.abs(x.toarray() - want).max() < 1e-12 * np.abs(want).max()
    assert x_masked.nnz < 0.5 * 200 * 5  # sparse on the wire both ways
    assert residual_ok(a, x, b) and not residual_ok(a, x * 1.000001, b)


class Fleet:
    """Providers on loopback, each with its own key and solver."""

    def __init__(self) -> None:
        self.servers: list[grpc.Server] = []
        self.calls: dict[str, int] = {}

    def add(self, name: str, solver=sparse_lu_solve, fee: float = 1.0, sign_with: Signer | None = None) -> ProviderEndpoint:
        key = Signer.generate()

        def counted(task):
            self.calls[name] = self.calls.get(name, 0) + 1
            return solver(task)

        server, port = start_provider("127.0.0.1:0", sign_with or key, counted)
        self.servers.append(server)
        return ProviderEndpoint(name, f"127.0.0.1:{port}", key.public_key, fee)

    def stop(self) -> None:
        for s in self.servers:
            s.stop(0)


@pytest.fixture
def fleet():
    f = Fleet()
    yield f
    f.stop()


def wrong(task):
    return sparse_lu_solve(task) * 1.001


def random_answer(task):
    return np.random.default_rng().random(task.rhs.shape)


def silent(task):
    time.sleep(5)
    return sparse_lu_solve(task)


def test_two_honest_providers_agree_and_both_are_paid(fleet):
    a, b = system()
    out = Outsourcer([fleet.add("p1", fee=2.0), fleet.add("p2", fee=3.0), fleet.add("p3")])
    x = out.solve(a, b, cycle=0)
    assert agree(x, spla.spsolve(a, b), rtol=1e-10)
    (rec,) = out.records
    assert rec.accepted_by == ("p1", "p2") and rec.wrong == ()
    assert rec.payments == {"p1": 2.0, "p2": 3.0} and rec.penalties == {}
    assert [at.outcome for at in rec.attempts] == ["answered", "answered"]
    assert "p3" not in fleet.calls  # the third is asked only on a disagreement


def test_a_wrong_answer_brings_in_a_third_provider_and_the_wrong_one_pays_for_it(fleet):
    a, b = system()
    out = Outsourcer([fleet.add("p1", wrong), fleet.add("p2"), fleet.add("p3", fee=1.5)])
    x = out.solve(a, b, cycle=0)
    assert agree(x, spla.spsolve(a, b), rtol=1e-10)
    (rec,) = out.records
    assert rec.accepted_by == ("p2", "p3") and rec.wrong == ("p1",)
    assert rec.attempts[0].outcome == "failed-check"
    assert rec.payments == {"p2": 1.0, "p3": 1.5}
    assert rec.penalties == {"p1": 1.5}
    assert out.book.wrong == {"p1": 1} and out.book.eligible("p1", 1)


def test_random_and_silent_providers_leave_it_to_the_data_centre_and_pay_for_it(fleet):
    a, b = system()
    out = Outsourcer([fleet.add("p1", random_answer), fleet.add("p2", silent), fleet.add("p3", fee=2.0)],
                     timeout_s=1.0, data_centre_cost=4.0)
    t0 = time.monotonic()
    x = out.solve(a, b, cycle=0)
    assert time.monotonic() - t0 < 4.5  # the silent one costs its timeout, not its sleep
    assert agree(x, spla.spsolve(a, b), rtol=1e-10)
    (rec,) = out.records
    assert [(at.provider, at.outcome) for at in rec.attempts] == [
        ("p1", "failed-check"), ("p2", "no-answer"), ("p3", "answered")]
    assert "DEADLINE_EXCEEDED" in rec.attempts[1].detail
    assert rec.accepted_by == (DATA_CENTRE,)
    assert rec.wrong == ("p1", "p2")  # p3 was right: it agrees with the data centre
    assert rec.payments == {"p3": 2.0, DATA_CENTRE: 4.0}
    assert rec.penalties == {"p1": 3.0, "p2": 3.0}  # the data centre's cost and p3's fee, shared


def test_an_answer_signed_by_another_key_is_not_an_answer(fleet):
    a, b = system()
    out = Outsourcer([fleet.add("p1", sign_with=Signer.generate()), fleet.add("p2"), fleet.add("p3")])
    out.solve(a, b, cycle=0)
    (rec,) = out.records
    assert rec.attempts[0].outcome == "bad-signature" and rec.wrong == ("p1",)
    assert rec.accepted_by == ("p2", "p3")


def test_two_wrong_answers_blacklist_a_provider_for_three_cycles(fleet):
    a, b = system()
    providers = [fleet.add("p1", wrong), fleet.add("p2"), fleet.add("p3"), fleet.add("p4")]
    out = Outsourcer(providers)
    out.solve(a, b, cycle=4)  # rotation 4 % 4 = 0: p1 and p2 first
    assert out.records[-1].wrong == ("p1",) and out.records[-1].blacklisted_until == {}
    out.solve(a, b, cycle=8)  # p1 first again: its second wrong answer
    assert out.records[-1].blacklisted_until == {"p1": 11}
    for cycle in (9, 10, 11):
        assert "p1" not in [p.name for p in out.eligible(cycle)]
    assert "p1" in [p.name for p in out.eligible(12)]
    calls = fleet.calls.get("p1", 0)
    for cycle in (9, 10, 11):
        out.solve(a, b, cycle=cycle)
    assert fleet.calls.get("p1", 0) == calls  # not asked while banned
    assert all(r.wrong == () for r in out.records[2:])
    assert ProviderBook.from_json(out.book.to_json()) == out.book


def test_carbon_flow_and_tracing_through_providers_match_the_local_computation(fleet):
    out = Outsourcer([fleet.add("p1"), fleet.add("p2")])
    factors = parse_factors({"gen:0": 0.8})
    local = carbon_flow(THREE_NODES, factors)
    remote = carbon_flow(THREE_NODES, factors, solver=lambda a, b: out.solve(a, b, cycle=0))
    assert np.abs(remote.node_intensity - local.node_intensity).max() < 1e-12
    assert abs(remote.residual_t_per_h) < 1e-12
    shares = trace(remote, solver=lambda a, b: out.solve(a, b, cycle=1))
    assert np.abs(shares.mw.toarray() - trace(local).mw.toarray()).max() < 1e-9
    assert len(out.records) == 2 and all(r.accepted_by == ("p1", "p2") or r.accepted_by == ("p2", "p1")
                                         for r in out.records)
    lossless = snapshot(units=[("gen:0", 0, 10.0), ("load:0", 1, -10.0)],
                        branches=[("line:0", [(0, 10.0), (1, -10.0)])], nodes=2)
    got = carbon_flow(lossless, factors, solver=lambda a, b: out.solve(a, b, cycle=2)).node_intensity
    assert got == pytest.approx([0.8, 0.8], rel=1e-12)


def test_a_provider_refuses_a_task_whose_arrays_do_not_fit(fleet):
    p = fleet.add("p1")
    a, b = system(n=5)
    task, _ = mask(a, b, np.random.default_rng(1))
    msg = task_message("t1", task)
    msg.indices = msg.indices[:-8]
    with grpc.insecure_channel(p.address) as ch, pytest.raises(grpc.RpcError) as exc:
        cgrpc.ComputeStub(ch).Solve(msg, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "t1: sparse arrays do not fit n=5" in exc.value.details()
    with grpc.insecure_channel(p.address) as ch, pytest.raises(grpc.RpcError) as exc:
        cgrpc.ComputeStub(ch).Solve(cpb.SolveTask(task_id="t2", n=2, k=1, indptr=b"\0" * 24, rhs=b"\0" * 8),
                                    timeout=10)
    assert "t2: right-hand side has 8 bytes, expected 16" in exc.value.details()


def test_cli_providers_over_tls_a_dead_one_is_wrong_and_the_book_is_kept(tmp_path):
    import json
    import os
    import socket
    import stat
    import subprocess
    import sys

    from gridtrace.cli import main

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    procs = []
    entries = []
    try:
        for name in ("p1", "p2"):
            assert main(["compute", "init", "--dir", str(tmp_path / name)]) == 0
            key = tmp_path / name / "provider.key"
            assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gridtrace", "compute", "serve", "--dir", str(tmp_path / name),
                 "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            assert "listening on port" in procs[-1].stdout.readline()
            entries.append({"name": name, "address": f"localhost:{port}", "public_key": f"{name}/provider.pub.pem",
                            "tls_ca": f"{name}/tls/ca.pem"})
        # p3 is enrolled but not running
        entries.append({"name": "p3", "address": f"localhost:{free_port()}", "public_key": "p1/provider.pub.pem",
                        "tls_ca": "p1/tls/ca.pem"})
        pfile = tmp_path / "providers.json"
        pfile.write_text(json.dumps({"providers": entries, "timeout_s": 10}))
        (tmp_path / "f.json").write_text(json.dumps({"ext_grid:0": 0.8}))
        out, book = tmp_path / "t.json", tmp_path / "book.json"
        # cycle 1: the order is p2, p3, p1, so the dead p3 is among the first two
        assert main(["carbon", "trace", "--pandapower-case", "case9", "--emission-factors", str(tmp_path / "f.json"),
                     "--out", str(out), "--providers", str(pfile), "--provider-book", str(book), "--cycle", "1",
                     "--no-shares"]) == 0
        doc = json.loads(out.read_text())
        (rec,) = doc["outsourcing"]["records"]
        assert [(a["provider"], a["outcome"]) for a in rec["attempts"]] == [
            ("p2", "answered"), ("p3", "no-answer"), ("p1", "answered")]
        assert rec["wrong"] == ["p3"] and rec["penalties"] == {"p3": 1.0}
        assert json.loads(book.read_text()) == {"blacklisted_until": {}, "wrong": {"p3": 1}}
        assert doc["conservation"]["relative_residual"] < 1e-12
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


@pytest.mark.parametrize("entry, says", [
    ({"name": "p1", "address": "x:1", "public_key": "missing.pem", "insecure": True}, "providers[0] (p1): cannot read"),
    ({"name": "p1", "address": "x:1", "public_key": "k.pem"}, "no \"tls_ca\"; plaintext needs \"insecure\": true"),
    ({"name": "p1", "address": "x:1"}, "needs \"name\", \"address\" and \"public_key\""),
    ({"name": "p1", "address": "x:1", "public_key": "k.pem", "insecure": True, "fee": -1}, "fee must be a number >= 0"),
])
def test_a_bad_providers_file_is_refused_naming_the_entry(tmp_path, capsys, entry, says):
    import json

    from gridtrace.cli import main
    from protos.signing import write_public_key

    write_public_key(tmp_path / "k.pem", Signer.generate().public_key)
    (tmp_path / "providers.json").write_text(json.dumps({"providers": [entry]}))
    (tmp_path / "f.json").write_text("{}")
    code = main(["carbon", "trace", "--pandapower-case", "case9", "--emission-factors", str(tmp_path / "f.json"),
                 "--out", str(tmp_path / "t.json"), "--providers", str(tmp_path / "providers.json")])
    assert code == 2 and says in capsys.readouterr().err
