"""service/tools/healthcheck.py against a real gRPC health server on a free port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
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
