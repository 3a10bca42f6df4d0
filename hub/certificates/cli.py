"""`gridtrace cert ...`: pull a measurement certificate from a hub, verify one offline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from gridtrace.clihelp import add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    cert = add_command(sub, "cert", "measurement certificates", "gridtrace cert verify MTR-1.cert.json --trust trust.json")
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="COMMAND", required=True)

    pull = add_command(
        cert_sub, "pull", "fetch a meter's certificate for a period from a hub",
        "gridtrace cert pull --hub 127.0.0.1:7700 --tls-ca hub/tls/ca.pem --meter MTR-1 \\\n"
        "    --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z -o MTR-1.cert.json",
    )
    pull.add_argument("--hub", required=True, help="host:port of the hub")
    pull.add_argument("--meter", required=True)
    pull.add_argument("--from", dest="from_", required=True, help="start, ISO 8601 with zone (or ns since epoch), inclusive")
    pull.add_argument("--to", required=True, help="end, exclusive")
    pull.add_argument("-o", "--output", type=Path, required=True)
    pull.add_argument("--tls-ca", type=Path, help="CA certificate of the hub's TLS")
    pull.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    pull.set_defaults(func=cmd_pull)

    verify = add_command(
        cert_sub, "verify", "verify a certificate offline against a trust file; exit 1 if it fails",
        "gridtrace cert verify MTR-1.cert.json --trust trust.json",
    )
    verify.add_argument("file", type=Path)
    verify.add_argument("--trust", type=Path, required=True, help="trust file with the public keys of gateways and hubs")
    verify.add_argument("--json", action="store_true", help="print the summary as JSON")
    verify.set_defaults(func=cmd_verify)


def pull_certificate(hub: str, meter: str, from_ns: int, to_ns: int, tls_ca: Path | None, timeout: float = 60.0) -> str:
    from protos import ingest_pb2, ingest_pb2_grpc

    if tls_ca is None:
        channel = grpc.insecure_channel(hub)
    else:
        channel = grpc.secure_channel(hub, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
    with channel:
        resp = ingest_pb2_grpc.QueryStub(channel).GetCertificate(
            ingest_pb2.CertificateRequest(meter_id=meter, from_ns=from_ns, to_ns=to_ns), timeout=timeout
        )
    return resp.certificate_json


def cmd_pull(args: argparse.Namespace) -> int:
    from hub.certificates.document import parse_time

    if not args.insecure and args.tls_ca is None:
        print("gridtrace cert pull: --tls-ca is required unless --insecure", file=sys.stderr)
        return 2
    try:
        from_ns, to_ns = parse_time(args.from_), parse_time(args.to)
    except ValueError as exc:
        print(f"gridtrace cert pull: {exc}", file=sys.stderr)
        return 2
    try:
        text = pull_certificate(args.hub, args.meter, from_ns, to_ns, None if args.insecure else args.tls_ca)
    except grpc.RpcError as exc:
        print(f"gridtrace cert pull: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gridtrace cert pull: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        args.output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"gridtrace cert pull: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hub.certificates.summary import print_summary, summary_json
    from hub.certificates.trust import TrustError, load_trust
    from hub.certificates.verify import VerificationError, verify_certificate

    try:
        trust = load_trust(args.trust)
    except TrustError as exc:
        print(f"gridtrace cert verify: {exc}", file=sys.stderr)
        return 2
    from hub.certificates.document import DocumentError, load_json

    try:
        doc = load_json(args.file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, DocumentError, UnicodeDecodeError) as exc:
        print(f"FAILED: {args.file} cannot be read as JSON: {exc}", file=sys.stderr)
        return 1
    try:
        summary = verify_certificate(doc, trust)
    except VerificationError as exc:
        print(f"FAILED: {args.file}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary_json(summary), indent=2))
    else:
        print_summary(summary, args.file)
    return 0
