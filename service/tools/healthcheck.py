"""Ask a running server whether it is SERVING, over the standard gRPC health protocol.

    python -m service.tools.healthcheck          # 127.0.0.1:$RECSYS_PORT (50051), service ""
    python -m service.tools.healthcheck --port 50051 --service recsys.v1.Recommender --timeout 2
    python -m service.tools.healthcheck --tls-ca ca.pem   # a server with --tls-cert

Exit status 0 when the answer is SERVING and 1 otherwise (NOT_SERVING, unknown service, no
answer within the timeout, nothing listening), with one line on stderr saying which. Those are
the meanings Docker's HEALTHCHECK gives to 0 and 1, so the image uses this module as its health
check; Kubernetes does not need it (its probes speak the protocol natively), except with TLS,
which its gRPC probes cannot speak: there an exec probe runs this module.

TLS follows the server's own settings, which the image passes as environment variables: with
RECSYS_TLS_CERT set the check speaks TLS and trusts RECSYS_HEALTHCHECK_TLS_CA (the CA that
signed the server's certificate), or without it the server's certificate itself (gRPC takes
it as the trust anchor); with RECSYS_TLS_CLIENT_CA set (mutual TLS) it shows
RECSYS_HEALTHCHECK_TLS_CERT and _KEY, or else the server's own pair. The flags override them.

Imports only grpcio and grpcio-health-checking, never the model code, so it starts in a fraction
of a second even while the server is busy loading a large model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Tls:
    """How to reach a server over TLS: the CA bundle that signed its certificate, a client
    certificate and key for mutual TLS, and the name its certificate is for when that is
    not the host dialled."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


def check(
    host: str, port: int, service: str = "", timeout_s: float = 2.0, tls: Tls | None = None
) -> tuple[bool, str]:
    """One Health/Check call. Returns (serving, status name or error description).

    `timeout_s` bounds the whole call, connection included (seconds). Never raises for
    network or protocol failures: those come back as (False, reason).
    """
    target = f"{host}:{port}"
    try:
        channel = _channel(target, tls)
    except OSError as err:
        return False, f"cannot read a TLS file: {err}"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code is grpc.StatusCode.NOT_FOUND:
                return False, f"{target} does not know service {service!r}"
            name = code.name if code is not None else "error"
            hint = ""
            if tls is not None and code is grpc.StatusCode.UNAVAILABLE:
                hint = (f"; over TLS trusting {tls.ca}: is that the CA that signed the "
                        "server's certificate? (RECSYS_HEALTHCHECK_TLS_CA, --tls-ca)")  # fmt: skip
            return False, f"{target}: {name} ({_details(err)}){hint}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, status


def _channel(target: str, tls: Tls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    identity = {}
    if tls.cert is not None and tls.key is not None:
        identity = {"private_key": tls.key.read_bytes(), "certificate_chain": tls.cert.read_bytes()}
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes(), **identity)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def tls_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Tls | None:
    """TLS settings from the flags, then the environment (module docstring); None: plain."""

    def pick(flag: str | None, *names: str) -> str | None:
        return flag or next((environ[n] for n in names if environ.get(n)), None)

    ca = pick(args.tls_ca, "RECSYS_HEALTHCHECK_TLS_CA", "RECSYS_TLS_CERT")
    if ca is None:
        return None
    mutual = args.tls_cert or environ.get("RECSYS_TLS_CLIENT_CA")
    cert = pick(args.tls_cert, "RECSYS_HEALTHCHECK_TLS_CERT", "RECSYS_TLS_CERT") if mutual else None
    key = pick(args.tls_key, "RECSYS_HEALTHCHECK_TLS_KEY", "RECSYS_TLS_KEY") if mutual else None
    return Tls(
        Path(ca),
        Path(cert) if cert else None,
        Path(key) if key else None,
        pick(args.tls_server_name, "RECSYS_HEALTHCHECK_TLS_SERVER_NAME"),
    )


def _details(err: grpc.RpcError) -> str:
    details = err.details() if isinstance(err, grpc.Call) else None
    return details or "no details"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.healthcheck",
        description="Exit 0 iff the server reports SERVING over grpc.health.v1.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address [127.0.0.1]")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="gRPC port [RECSYS_PORT, else 50051], the same variable the server reads",
    )
    parser.add_argument("--service", default="", help='service name; "" is the whole server [""]')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait [2]")
    parser.add_argument("--tls-ca", help="speak TLS, trusting this CA bundle (PEM) "
                        "[RECSYS_HEALTHCHECK_TLS_CA, else RECSYS_TLS_CERT]")  # fmt: skip
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM) "
                        "[RECSYS_HEALTHCHECK_TLS_CERT, else RECSYS_TLS_CERT]")  # fmt: skip
    parser.add_argument("--tls-key", help="its private key (PEM) "
                        "[RECSYS_HEALTHCHECK_TLS_KEY, else RECSYS_TLS_KEY]")  # fmt: skip
    parser.add_argument("--tls-server-name", help="the name the server's certificate is for, "
                        "when not --host [RECSYS_HEALTHCHECK_TLS_SERVER_NAME]")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    port = args.port
    if port is None:
        raw = environ.get("RECSYS_PORT") or "50051"
        try:
            port = int(raw)
        except ValueError:
            print(f"healthcheck: RECSYS_PORT={raw!r} is not a port number", file=sys.stderr)
            return 1
    serving, status = check(args.host, port, args.service, args.timeout, tls_from(args, environ))
    if not serving:
        print(f"healthcheck: not serving: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
