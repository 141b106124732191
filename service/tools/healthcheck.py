"""Ask a running server whether it is SERVING, over the standard gRPC health protocol.

    python -m service.tools.healthcheck          # 127.0.0.1:$RECSYS_PORT (50051), service ""
    python -m service.tools.healthcheck --port 50051 --service recsys.v1.Recommender --timeout 2

Exit status 0 when the answer is SERVING and 1 otherwise (NOT_SERVING, unknown service, no
answer within the timeout, nothing listening), with one line on stderr saying which. Those are
the meanings Docker's HEALTHCHECK gives to 0 and 1, so the image uses this module as its health
check; Kubernetes does not need it (its probes speak the protocol natively).

Imports only grpcio and grpcio-health-checking, never the model code, so it starts in a fraction
of a second even while the server is busy loading a large model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(host: str, port: int, service: str = "", timeout_s: float = 2.0) -> tuple[bool, str]:
    """One Health/Check call. Returns (serving, status name or error description).

    `timeout_s` bounds the whole call, connection included (seconds). Never raises for
    network or protocol failures: those come back as (False, reason).
    """
    target = f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code is grpc.StatusCode.NOT_FOUND:
                return False, f"{target} does not know service {service!r}"
            name = code.name if code is not None else "error"
            return False, f"{target}: {name} ({_details(err)})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, status


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    port = args.port
    if port is None:
        raw = os.environ.get("RECSYS_PORT") or "50051"
        try:
            port = int(raw)
        except ValueError:
            print(f"healthcheck: RECSYS_PORT={raw!r} is not a port number", file=sys.stderr)
            return 1
    serving, status = check(args.host, port, args.service, args.timeout)
    if not serving:
        print(f"healthcheck: not serving: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
