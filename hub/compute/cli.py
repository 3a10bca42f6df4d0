"""`gridtrace compute ...`: run a compute provider that solves masked tasks for substations."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from gridtrace.clihelp import add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    compute = add_command(sub, "compute", "a compute provider for outsourced carbon computation",
                          "gridtrace compute init --dir prov1 --host 127.0.0.1\n"
                          "gridtrace compute serve --dir prov1 --listen 127.0.0.1:7800")
    csub = compute.add_subparsers(dest="compute_command", metavar="COMMAND", required=True)

    init = add_command(csub, "init", "create a provider's signing key (0600) and TLS certificate",
                       "gridtrace compute init --dir prov1 --host 127.0.0.1")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--host", action="append", default=None,
                      help="DNS name or IP the provider is reached by (repeatable; default 127.0.0.1 and localhost)")
    init.set_defaults(func=cmd_init)

    serve = add_command(csub, "serve", "solve masked sparse systems over gRPC (TLS unless --insecure)",
                        "gridtrace compute serve --dir prov1 --listen 127.0.0.1:7800")
    serve.add_argument("--dir", type=Path, required=True, help="made by gridtrace compute init")
    serve.add_argument("--listen", default="127.0.0.1:7800", help="host:port (default 127.0.0.1:7800)")
    serve.add_argument("--insecure", action="store_true", help="plaintext gRPC (local development only)")
    serve.set_defaults(func=cmd_serve)


def cmd_init(args: argparse.Namespace) -> int:
    from hub.tls import create_tls_files
    from protos.signing import KeyFileError, create_key_pair

    try:
        signer = create_key_pair(args.dir, "provider")
    except KeyFileError as exc:
        print(f"gridtrace compute: {exc}", file=sys.stderr)
        return 2
    create_tls_files(args.dir / "tls", args.host or ["127.0.0.1", "localhost"], "gridtrace compute provider")
    print(json.dumps({"key_id": signer.key_id, "public_key": str(args.dir / "provider.pub.pem"),
                      "tls_ca": str(args.dir / "tls" / "ca.pem")}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # One OpenBLAS thread per solve (before numpy is imported, which reads it once). SuperLU's
    # multi-column solves call BLAS, and OpenBLAS's spinning threads in two providers and the
    # owner on one host made a 0.4 s solve take 5 to 12 s; an operator can still set it higher.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import grpc

    from hub.compute.provider import start_provider
    from protos.signing import KeyFileError, load_private_key

    try:
        signer = load_private_key(args.dir / "provider.key")
    except KeyFileError as exc:
        print(f"gridtrace compute: {exc}", file=sys.stderr)
        return 2
    creds = None
    if not args.insecure:
        tls = args.dir / "tls"
        try:
            creds = grpc.ssl_server_credentials([((tls / "hub.key").read_bytes(), (tls / "hub.pem").read_bytes())])
        except OSError as exc:
            print(f"gridtrace compute: cannot read the TLS files in {tls}: {exc.strerror} "
                  "(run gridtrace compute init, or pass --insecure for local development)", file=sys.stderr)
            return 2
    try:
        server, port = start_provider(args.listen, signer, credentials=creds)
    except RuntimeError as exc:
        print(f"gridtrace compute: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    print(f"compute provider {signer.key_id} listening on port {port}{' (plaintext)' if args.insecure else ''}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(2).wait()
    return 0
