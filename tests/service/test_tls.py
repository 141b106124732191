"""TLS and mutual TLS from certificate files, with a CA generated for the test (conftest.pki)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from service.proto import recommender_pb2 as pb
from service.proto import recommender_pb2_grpc as pb_grpc


def call(target: str, credentials: grpc.ChannelCredentials | None, items: list[str]):
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = pb_grpc.RecommenderStub(channel)
        return stub.Recommend(pb.RecommendRequest(clicks=items), timeout=5)


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(start_server, pki, tiny):
    running = start_server(tls_cert=pki["server"], tls_key=pki["server_key"])
    trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    assert len(call(running.target, trusted, tiny.item_ids[:2]).items) == 20
    with pytest.raises(grpc.RpcError) as caught:
        call(running.target, None, tiny.item_ids[:2])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(start_server, pki, tiny):
    running = start_server(
        tls_cert=pki["server"], tls_key=pki["server_key"], tls_client_ca=pki["ca"]
    )
    ca = pki["ca"].read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client"].read_bytes(),
    )
    assert len(call(running.target, with_cert, tiny.item_ids[:2]).items) == 20
    with pytest.raises(grpc.RpcError) as caught:
        call(running.target, grpc.ssl_channel_credentials(root_certificates=ca), tiny.item_ids[:2])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_missing_certificate_file_is_named(start_server, pki, tmp_path):
    with pytest.raises(OSError, match="cannot read a TLS file"):
        start_server(tls_cert=tmp_path / "nope.pem", tls_key=pki["server_key"])


def test_a_certificate_with_another_certificates_key_is_named_not_the_port(start_server, pki, tiny):
    with pytest.raises(ValueError, match="cannot be used together") as caught:
        start_server(tls_cert=pki["server"], tls_key=pki["client_key"])
    assert str(pki["server"]) in str(caught.value) and "port" not in str(caught.value)
    # the command line says the same and exits 2
    done = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(tiny.export_dir), "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0", "--tls-cert", str(pki["server"]),
         "--tls-key", str(pki["client_key"])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert str(pki["server"]) in done.stderr and "cannot be used together" in done.stderr


def test_a_client_ca_file_without_a_certificate_is_named_not_the_port(start_server, pki):
    with pytest.raises(ValueError, match="holds no usable CA certificate") as caught:
        start_server(tls_cert=pki["server"], tls_key=pki["server_key"],
                     tls_client_ca=pki["client_key"])  # fmt: skip
    assert str(pki["client_key"]) in str(caught.value) and "port" not in str(caught.value)
