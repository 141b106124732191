"""service/tools/healthcheck.py against a real gRPC health server on a free port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.tools import healthcheck

ROOT = Path(__file__).resolve().parents[3]
SERVICE = "recsys.v1.Recommender"
Status = health_pb2.HealthCheckResponse


@pytest.fixture()
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def test_serving_server_exits_zero(health_server):
    servicer, port = health_server
    servicer.set("", Status.SERVING)
    assert healthcheck.main(["--port", str(port)]) == 0


def test_not_serving_exits_one_and_says_so(health_server, capsys):
    servicer, port = health_server
    servicer.set(SERVICE, Status.NOT_SERVING)
    assert healthcheck.main(["--port", str(port), "--service", SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_checks_the_named_service_not_the_server(health_server):
    servicer, port = health_server
    servicer.set("", Status.SERVING)
    servicer.set(SERVICE, Status.NOT_SERVING)
    assert healthcheck.check("127.0.0.1", port, "") == (True, "SERVING")
    assert healthcheck.check("127.0.0.1", port, SERVICE) == (False, "NOT_SERVING")


def test_unknown_service_is_unhealthy(health_server):
    _, port = health_server
    serving, reason = healthcheck.check("127.0.0.1", port, "no.such.Service")
    assert not serving and "does not know service 'no.such.Service'" in reason


def test_draining_server_is_unhealthy(health_server):
    servicer, port = health_server
    servicer.set("", Status.SERVING)
    servicer.enter_graceful_shutdown()  # what the server does on SIGTERM
    assert healthcheck.check("127.0.0.1", port) == (False, "NOT_SERVING")


def test_nothing_listening_is_unhealthy():
    free = _closed_port()
    serving, reason = healthcheck.check("127.0.0.1", free, timeout_s=1.0)
    assert not serving
    assert "UNAVAILABLE" in reason or "DEADLINE_EXCEEDED" in reason


def test_port_defaults_to_recsys_port_as_in_the_image(health_server, monkeypatch):
    servicer, port = health_server
    servicer.set("", Status.SERVING)
    monkeypatch.setenv("RECSYS_PORT", str(port))
    result = subprocess.run(
        [sys.executable, "-m", "service.tools.healthcheck", "--timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("RECSYS_PORT", "fifty")
    assert healthcheck.main([]) == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def tls_health_server(pki) -> Iterator[Callable[[bool], int]]:
    """start(mutual) -> the port of a SERVING health server with the test CA's server
    certificate, asking for a client certificate from that CA when mutual."""
    servers = []

    def start(mutual: bool) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", Status.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        pair = (pki["server_key"].read_bytes(), pki["server"].read_bytes())
        credentials = grpc.ssl_server_credentials(
            [pair], root_certificates=pki["ca"].read_bytes() if mutual else None,
            require_client_auth=mutual,
        )  # fmt: skip
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(None)


def test_a_tls_server_is_checked_over_tls_trusting_its_ca(tls_health_server, pki, capsys):
    port = tls_health_server(False)
    assert healthcheck.main(["--port", str(port)], environ={}) == 1  # plaintext: refused
    # as in the image: the server's own settings; its certificate is the one trusted
    image_env = {"RECSYS_TLS_CERT": str(pki["server"]), "RECSYS_TLS_KEY": str(pki["server_key"])}
    assert healthcheck.main(["--port", str(port)], environ=image_env) == 0
    env = {**image_env, "RECSYS_HEALTHCHECK_TLS_CA": str(pki["ca"])}
    assert healthcheck.main(["--port", str(port)], environ=env) == 0
    assert healthcheck.main(["--port", str(port), "--tls-ca", str(pki["ca"])], environ={}) == 0
    # trusting what did not sign it: refused, and the reason names the setting
    wrong = {**image_env, "RECSYS_HEALTHCHECK_TLS_CA": str(pki["client"])}
    assert healthcheck.main(["--port", str(port)], environ=wrong) == 1
    assert "RECSYS_HEALTHCHECK_TLS_CA" in capsys.readouterr().err


def test_mutual_tls_shows_the_client_certificate(tls_health_server, pki):
    port = tls_health_server(True)
    env = {
        "RECSYS_TLS_CERT": str(pki["server"]),
        "RECSYS_TLS_KEY": str(pki["server_key"]),
        "RECSYS_TLS_CLIENT_CA": str(pki["ca"]),
        "RECSYS_HEALTHCHECK_TLS_CA": str(pki["ca"]),
    }
    # the server's own pair, signed by the same CA, is a client certificate it accepts
    assert healthcheck.main(["--port", str(port)], environ=env) == 0
    client = ["--tls-cert", str(pki["client"]), "--tls-key", str(pki["client_key"])]
    assert healthcheck.main(["--port", str(port), *client], environ=env) == 0
    no_client = {k: v for k, v in env.items() if k != "RECSYS_TLS_CLIENT_CA"}
    assert healthcheck.main(["--port", str(port)], environ=no_client) == 1
