"""A gRPC channel from an operator command to the hub its config describes.

Operator commands run on the hub's machine (or in its container) and read the same
hub.toml: they reach the listen address (0.0.0.0 becomes loopback) over TLS, checking the
hub's certificate against `[server] tls_ca`, or in plaintext when the hub runs so.
"""

from __future__ import annotations

import grpc

from hub.config import HubConfig, client_address


class HubUnreachable(Exception):
    """The running hub could not be asked (not running, wrong address, TLS mismatch)."""


def hub_channel(cfg: HubConfig) -> grpc.Channel:
    address = client_address(cfg.listen)
    if cfg.insecure_plaintext:
        return grpc.insecure_channel(address)
    if cfg.tls_ca is None or not cfg.tls_ca.exists():
        raise HubUnreachable(
            f"{cfg.path}: [server] tls_ca {cfg.tls_ca} does not exist; operator commands check the hub's "
            "certificate with it (hub init writes tls/ca.pem)"
        )
    # hub init always puts 127.0.0.1 and localhost in the certificate, so a wildcard listen
    # address reached over loopback verifies.
    creds = grpc.ssl_channel_credentials(root_certificates=cfg.tls_ca.read_bytes())
    return grpc.secure_channel(address, creds)


def describe_rpc_error(cfg: HubConfig, exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    where = client_address(cfg.listen)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"hub at {where} is not reachable ({detail}); is `gridtrace hub serve --config {cfg.path}` running?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"hub at {where} did not answer in time"
    return f"hub at {where}: {code.name if code else 'error'}: {detail}"
