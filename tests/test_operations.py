"""The hub as an operated service: Prometheus metrics scraped from a running hub, JSON logs,
gRPC health that follows the database, and the operator commands `hub health`, `hub status`
and `hub gateways` against a running hub over TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from gridtrace.cli import main as gridtrace_main
from hub.config import load_hub_config
from hub.storage.store import Store
from protos import ingest_pb2_grpc

from hubharness import GatewaySim, RunningHub, init_hub, register_gateway

INGEST = "gridtrace.v1.Ingest"


def _channel(cfg):  # noqa: ANN001, ANN202
    if cfg.insecure_plaintext:
        return grpc.insecure_channel(cfg.listen)
    ca = (cfg.path.parent / "tls" / "ca.pem").read_bytes()
    return grpc.secure_channel(cfg.listen, grpc.ssl_channel_credentials(ca))


def stream(cfg, messages, timeout: float = 10.0) -> list:  # noqa: ANN001
    with _channel(cfg) as ch:
        return list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(messages), timeout=timeout))


def stream_rejected(cfg, messages) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        stream(cfg, messages)
    return info.value


def scrape(cfg) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    """{(sample name, sorted labels): value} from the hub's /metrics."""
    with urllib.request.urlopen(f"http://{cfg.metrics_listen}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _set(cfg, table: str, line: str):  # noqa: ANN001, ANN202
    """Add `line` to `[table]` of the hub's config and load it again."""
    text = cfg.path.read_text()
    text = text.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)
    cfg.path.write_text(text)
    return load_hub_config(cfg.path)


def _bad_signature(gw: GatewaySim):  # noqa: ANN202
    msg = gw.batch(3, advance=False)
    msg.signature = bytes(64)
    return msg


def _wait(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------


def test_metrics_count_what_was_streamed_per_hub(tmp_path, database_url):
    a_cfg = init_hub(tmp_path / "a", metrics=True, block_interval=0.2, database_url=database_url)
    b_cfg = init_hub(tmp_path / "b", metrics=True, block_interval=0.2)
    gw, intruder = GatewaySim.new("gw-1", "MTR-1"), GatewaySim.new("gw-2", "MTR-2")
    for cfg in (a_cfg, b_cfg):
        register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
        register_gateway(cfg, intruder.gateway_id, intruder.signer, tmp_path)
    # two hubs in one process, each with its own registry
    with RunningHub(a_cfg), RunningHub(b_cfg):
        first = gw.batch(5)
        receipts = stream(a_cfg, [first, gw.batch(7), gw.batch(4)])
        assert [r.duplicate for r in receipts] == [False, False, False]
        assert [r.duplicate for r in stream(a_cfg, [first])] == [True]
        err = stream_rejected(a_cfg, [_bad_signature(intruder)])
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

        _wait(lambda: scrape(a_cfg).get(("gridtrace_hub_block_height", ()), 0) >= 1)
        m = scrape(a_cfg)
        assert m[("gridtrace_hub_batches_total", (("reason", ""), ("result", "stored")))] == 3
        assert m[("gridtrace_hub_readings_total", (("reason", ""), ("result", "stored")))] == 16
        assert m[("gridtrace_hub_batches_total", (("reason", ""), ("result", "duplicate")))] == 1
        assert m[("gridtrace_hub_batches_total", (("reason", "bad-signature"), ("result", "rejected")))] == 1
        assert m[("gridtrace_hub_readings_total", (("reason", "bad-signature"), ("result", "rejected")))] == 3
        assert m[("gridtrace_hub_ingest_latency_seconds_count", ())] == 3
        assert 0 < m[("gridtrace_hub_ingest_latency_seconds_sum", ())] < 30
        assert m[("gridtrace_hub_db_seconds_count", (("op", "store_batches"),))] >= 1
        assert m[("gridtrace_hub_db_seconds_count", (("op", "append_block"),))] >= 1
        assert m[("gridtrace_hub_group_commit_batches_sum", ())] == 3
        _wait(lambda: scrape(a_cfg)[("gridtrace_hub_queue_depth", (("queue", "unsealed"),))] == 0)
        m = scrape(a_cfg)
        assert m[("gridtrace_hub_queue_depth", (("queue", "commit"),))] == 0
        assert m[("gridtrace_hub_streams", ())] == 0
        assert m[("gridtrace_hub_connected_gateways", ())] == 0
        assert m[("gridtrace_hub_database_up", ())] == 1
        assert ("process_resident_memory_bytes", ()) in m
        height = Store(a_cfg.database_url).head().height
        assert m[("gridtrace_hub_block_height", ())] == height

        # the other hub saw nothing
        other = scrape(b_cfg)
        assert other.get(("gridtrace_hub_batches_total", (("reason", ""), ("result", "stored"))), 0) == 0
        assert other[("gridtrace_hub_block_height", ())] == 0


def test_open_streams_and_connected_gateways_are_gauges(tmp_path):
    cfg = init_hub(tmp_path / "hub", metrics=True)
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    import queue as queue_mod

    with RunningHub(cfg):
        outbox: queue_mod.Queue = queue_mod.Queue()

        def requests():  # noqa: ANN202
            while (item := outbox.get()) is not None:
                yield item

        with _channel(cfg) as ch:
            call = ingest_pb2_grpc.IngestStub(ch).Stream(requests(), timeout=20)
            outbox.put(gw.batch(2))
            assert next(call).batch_seq == 1
            m = scrape(cfg)
            assert m[("gridtrace_hub_streams", ())] == 1
            assert m[("gridtrace_hub_connected_gateways", ())] == 1
            outbox.put(None)
            assert list(call) == []
        _wait(lambda: scrape(cfg)[("gridtrace_hub_streams", ())] == 0)
        assert scrape(cfg)[("gridtrace_hub_connected_gateways", ())] == 0


def test_a_metrics_port_in_use_stops_the_hub_with_the_setting_named(tmp_path):
    import socket

    cfg = init_hub(tmp_path / "hub", metrics=True)
    with socket.socket() as taken:
        host, port = cfg.metrics_listen.split(":")
        taken.bind((host, int(port)))
        taken.listen()
        with pytest.raises(OSError, match=r"\[metrics\] listen"):
            with RunningHub(cfg):
                pass


# ---------------------------------------------------------------------------
# Health.
# ---------------------------------------------------------------------------


def _health(cfg, service: str = INGEST) -> int:  # noqa: ANN001
    with _channel(cfg) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_follows_the_database_and_reflection_stays(tmp_path, monkeypatch, capsys, database_url):
    cfg = _set(init_hub(tmp_path / "hub", database_url=database_url), "server", "health_interval_s = 0.1")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    broken = {"on": False}
    real_chain_id = Store.chain_id

    def chain_id(self):  # noqa: ANN001, ANN202
        if broken["on"]:
            raise OSError("database server closed the connection (injected)")
        return real_chain_id(self)

    monkeypatch.setattr(Store, "chain_id", chain_id)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with RunningHub(cfg):
        assert _health(cfg) == serving and _health(cfg, "") == serving
        assert gridtrace_main(["hub", "health", "--config", str(cfg.path)]) == 0
        assert "SERVING" in capsys.readouterr().out

        broken["on"] = True
        _wait(lambda: _health(cfg) == not_serving)
        assert _health(cfg, "") == not_serving
        assert gridtrace_main(["hub", "health", "--config", str(cfg.path)]) == 1
        assert "NOT_SERVING" in capsys.readouterr().out

        broken["on"] = False
        _wait(lambda: _health(cfg) == serving)
        assert gridtrace_main(["hub", "health", "--config", str(cfg.path)]) == 0

        with grpc.insecure_channel(cfg.listen) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {INGEST, "gridtrace.v1.Query", "grpc.health.v1.Health"} <= names


def test_a_failed_commit_turns_ingest_not_serving_until_a_commit_succeeds(tmp_path, monkeypatch):
    cfg = _set(init_hub(tmp_path / "hub"), "server", "health_interval_s = 0.1")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    failing = {"on": False}
    real = Store.store_batches

    def store_batches(self, new, stored_ns):  # noqa: ANN001, ANN202
        if failing["on"]:
            raise OSError("disk full (injected)")
        return real(self, new, stored_ns)

    monkeypatch.setattr(Store, "store_batches", store_batches)
    with RunningHub(cfg):
        failing["on"] = True
        msg = gw.batch(2, advance=False)
        assert stream_rejected(cfg, [msg]).code() == grpc.StatusCode.UNAVAILABLE
        _wait(lambda: _health(cfg) == health_pb2.HealthCheckResponse.NOT_SERVING)
        failing["on"] = False
        assert [r.batch_seq for r in stream(cfg, [msg])] == [1]
        _wait(lambda: _health(cfg) == health_pb2.HealthCheckResponse.SERVING)


def test_health_command_without_a_running_hub_fails(tmp_path, capsys):
    cfg = init_hub(tmp_path / "hub", insecure=False)
    assert gridtrace_main(["hub", "health", "--config", str(cfg.path), "--timeout", "1"]) == 1
    assert "not reachable" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Operator commands over TLS.
# ---------------------------------------------------------------------------


def test_status_and_gateways_over_tls(tmp_path, capsys):
    cfg = init_hub(tmp_path / "hub", insecure=False, block_interval=0.2)
    text = cfg.path.read_text() + '\n[peers]\nreplicas = ["hub-b.example.net:7700"]\n'
    cfg.path.write_text(text)
    cfg = load_hub_config(cfg.path)
    gw, quiet, bad = GatewaySim.new("gw-1", "MTR-1"), GatewaySim.new("gw-2", "MTR-2"), GatewaySim.new("gw-3", "MTR-3")
    for g in (gw, quiet, bad):
        register_gateway(cfg, g.gateway_id, g.signer, tmp_path)
    with RunningHub(cfg):
        stream(cfg, [gw.batch(5), gw.batch(5), gw.batch(10)])
        stream_rejected(cfg, [_bad_signature(bad)])
        gap = bad.batch(2)
        gap.header.seq = 5  # not the next batch of gw-3: re-signed so only the place is wrong
        from protos.wire import header_from_pb
        from protos.canonical import encode_batch_header

        gap.signature = bad.signer.sign(encode_batch_header(header_from_pb(gap.header)))
        assert stream_rejected(cfg, [gap]).code() == grpc.StatusCode.FAILED_PRECONDITION
        _wait(lambda: Store(cfg.database_url).counts()[1] == 0)
        capsys.readouterr()

        assert gridtrace_main(["hub", "status", "--config", str(cfg.path), "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["chain_id"] == "test-chain" and st["height"] >= 1
        assert st["batches_stored"] == 3 and st["batches_unsealed"] == 0 and st["entries_stored"] == 20
        assert st["gateways"] == ["gw-1", "gw-2", "gw-3"]
        assert st["peers"] == ["hub-b.example.net:7700"]
        assert st["streams"] == 0 and st["connected_gateways"] == []
        assert 0 <= st["lag_s"] < 30
        assert len(st["head_hash"]) == 64

        assert gridtrace_main(["hub", "status", "--config", str(cfg.path)]) == 0
        text_out = capsys.readouterr().out
        assert "height" in text_out and "3 registered" in text_out and "hub-b.example.net:7700" in text_out

        assert gridtrace_main(["hub", "gateways", "--config", str(cfg.path), "--json"]) == 0
        rows = {r["gateway"]: r for r in json.loads(capsys.readouterr().out)["gateways"]}
        assert rows["gw-1"]["last_seq"] == 3 and rows["gw-1"]["readings"] == 20 and rows["gw-1"]["batches"] == 3
        assert rows["gw-1"]["last_stored"] != "-" and rows["gw-1"]["rejects"] == {}
        assert rows["gw-1"]["readings_per_s_1m"] == pytest.approx(20 / 60, abs=0.01)
        assert rows["gw-2"]["last_seq"] == 0 and rows["gw-2"]["readings"] == 0
        assert rows["gw-3"]["rejects"] == {"bad-signature": 1, "gap": 1}
        assert rows["gw-3"]["last_seq"] == 0

        assert gridtrace_main(["hub", "gateways", "--config", str(cfg.path)]) == 0
        table = capsys.readouterr().out
        assert "gw-3" in table and "bad-signature 1" in table


def test_gateways_after_a_restart_show_the_stored_last_batch(tmp_path, capsys):
    cfg = init_hub(tmp_path / "hub")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    with RunningHub(cfg):
        stream(cfg, [gw.batch(2), gw.batch(2)])
    stored_ns = Store(cfg.database_url).find_batch(gw.gateway_id, 2).stored_ns
    capsys.readouterr()
    with RunningHub(cfg):
        assert gridtrace_main(["hub", "gateways", "--config", str(cfg.path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["gateways"]
    assert row["last_seq"] == 2 and row["batches"] == 0
    assert row["last_stored"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored_ns / 1e9))


def test_status_with_the_wrong_ca_fails_and_says_so(tmp_path, capsys):
    from hub.tls import create_tls_files

    cfg = init_hub(tmp_path / "hub", insecure=False)
    other_ca, _, _ = create_tls_files(tmp_path / "other", ["localhost"], "other")
    cfg.path.write_text(cfg.path.read_text().replace('tls_ca = "tls/ca.pem"', f'tls_ca = "{other_ca}"'))
    with RunningHub(load_hub_config(cfg.path)):
        assert gridtrace_main(["hub", "status", "--config", str(cfg.path), "--timeout", "3"]) == 1
    assert "gridtrace hub:" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Logs: `hub serve` as a process, with [logging] format = "json".
# ---------------------------------------------------------------------------


def test_serve_writes_json_logs_with_context_and_no_secrets(tmp_path):
    cfg = init_hub(tmp_path / "hub", block_interval=0.2)
    text = cfg.path.read_text().replace('format = "auto"', 'format = "json"')
    cfg.path.write_text(text)
    gw, bad = GatewaySim.new("gw-1", "MTR-1"), GatewaySim.new("gw-2", "MTR-2")
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    register_gateway(cfg, bad.gateway_id, bad.signer, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtrace", "hub", "serve", "--config", str(cfg.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        _wait(lambda: gridtrace_main(["hub", "health", "--config", str(cfg.path), "--timeout", "1"]) == 0, 20)
        stream(cfg, [gw.batch(3)])
        stream_rejected(cfg, [_bad_signature(bad)])
        _wait(lambda: (Store(cfg.database_url).head() or None) is not None)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, "no log lines"
    for rec in lines:
        assert {"ts", "level", "logger", "msg"} <= set(rec), rec
        assert rec["ts"].endswith("Z") and "T" in rec["ts"]
    sealed = [r for r in lines if r["msg"].startswith("sealed block")]
    assert sealed and sealed[0]["height"] == 1 and sealed[0]["logger"] == "gridtrace.hub.chain"
    rejected = [r for r in lines if r.get("reason") == "bad-signature"]
    assert rejected and rejected[0]["level"] == "WARNING" and "peer" in rejected[0]
    secret = (tmp_path / "hub" / "hub.key").read_text()
    body = "".join(secret.splitlines()[1:-1])
    assert body not in err


def test_log_format_flag_overrides_the_config(tmp_path):
    cfg = init_hub(tmp_path / "hub")
    cfg.path.write_text(cfg.path.read_text().replace('format = "auto"', 'format = "json"'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtrace", "--log-format", "text", "hub", "serve", "--config", str(cfg.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait(lambda: gridtrace_main(["hub", "health", "--config", str(cfg.path), "--timeout", "1"]) == 0, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert " INFO gridtrace.hub: hub test-chain" in err
    assert not any(line.startswith("{") for line in err.splitlines())


def test_json_formatter_copies_only_known_context_fields():
    import io
    import logging

    from gridtrace.logjson import configure_logging

    buf = io.StringIO()
    try:
        configure_logging("INFO", "json", buf)
        logging.getLogger("gridtrace.hub").info("x %d", 1, extra={"gateway": "gw-1", "batch_seq": 7, "password": "p"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("gridtrace.hub").exception("failed", extra={"height": 3})
        first, second = (json.loads(x) for x in buf.getvalue().splitlines())
        assert first["msg"] == "x 1" and first["gateway"] == "gw-1" and first["batch_seq"] == 7
        assert "password" not in first and first["level"] == "INFO" and first["logger"] == "gridtrace.hub"
        assert second["height"] == 3 and "ValueError: boom" in second["exc"] and second["level"] == "ERROR"
        buf2 = io.StringIO()
        configure_logging("WARNING", "auto", buf2)  # not a terminal: json
        logging.getLogger("a").info("hidden")
        logging.getLogger("a").warning("shown")
        assert [json.loads(x)["msg"] for x in buf2.getvalue().splitlines()] == ["shown"]
        buf3 = io.StringIO()
        configure_logging("INFO", "text", buf3)
        logging.getLogger("a").info("plain")
        assert "INFO a: plain" in buf3.getvalue()
    finally:
        configure_logging("INFO", "text")


def test_default_handler_writes_to_the_current_stderr(monkeypatch):
    import io
    import logging

    from gridtrace.logjson import configure_logging

    try:
        configure_logging("INFO", "json")
        for _ in range(2):  # a replaced (and closed) stderr is not written to again
            buf = io.StringIO()
            monkeypatch.setattr(sys, "stderr", buf)
            logging.getLogger("gridtrace.x").info("hello", extra={"height": 9})
            assert json.loads(buf.getvalue())["height"] == 9
            buf.close()
        assert sum(1 for h in logging.getLogger().handlers if getattr(h, "gridtrace", False)) == 1
    finally:
        configure_logging("INFO", "text")
