"""Fixtures: a small GRU4Rec with random weights exported to ONNX, real servers on
127.0.0.1 with ephemeral ports (gRPC and metrics), stopped after each test, and a test CA
with server and client certificates (pki).

Servers run the shipped configuration (`start_server`, `served`: online layer on, as
`python -m service --model DIR` runs), or that with the online layer off
(`start_model_only_server`, `served_model_only`) for tests that check answers against the
model's own scores."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.config import ServiceConfig, load_config
from service.server import RecommendationServer
from service.tools.client import RecommenderClient
from training.config import Config
from training.data.logs import ItemVocab
from training.export import export_model
from training.fit.train import save_model
from training.models.architectures import build_model

N_ITEMS = 60


@dataclass
class TinyModel:
    model_dir: Path
    export_dir: Path
    model: torch.nn.Module  # the PyTorch original, eval mode
    item_ids: list[str]
    popularity: np.ndarray

    def index(self, item_id: str) -> int:
        return self.item_ids.index(item_id)

    def scores_after(self, clicks: list[str]) -> np.ndarray:
        """PyTorch scores (n_items,) after feeding `clicks` (known ids) from the zero state:
        the reference answer the service is checked against."""
        with torch.no_grad():
            hidden = self.model.init_hidden(1)
            for item in clicks:
                scores, hidden = self.model(torch.tensor([self.index(item)]), hidden, None)
        return scores[0].numpy()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Two GRU layers (8 and 6 units, so the state is two tensors side by side), 60 items."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = Config(layers=(8, 6), n_epochs=0)
    model = build_model(N_ITEMS, cfg).eval()
    item_ids = [f"item-{i:03d}" for i in range(N_ITEMS)]
    # a few equal counts, so the fallback's tie order is exercised
    popularity = np.random.default_rng(0).integers(0, 15, N_ITEMS).astype(np.int64)
    save_model(root / "model", model, cfg, ItemVocab(item_ids), popularity, {})
    export_model(root / "model", root / "export")
    return TinyModel(root / "model", root / "export", model, item_ids, popularity)


@dataclass
class Running:
    server: RecommendationServer
    client: RecommenderClient

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"


def shipped_config(model_dir: Path, **overrides: object) -> ServiceConfig:
    """The configuration `python -m service --model DIR --host 127.0.0.1 --port 0
    --metrics-port 0` runs with in a clean environment (every other setting its shipped
    default), with `overrides` on top."""
    argv = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    return replace(load_config(argv, environ={}), **overrides)


@pytest.fixture
def start_server(tiny: TinyModel) -> Iterator[Callable[..., Running]]:
    """start_server(load=True, **config overrides) -> Running, in the shipped configuration
    (online layer on) unless overridden; all stopped at teardown, without the drain."""
    started: list[Running] = []

    def start(load: bool = True, **overrides: object) -> Running:
        model_dir = overrides.pop("model_dir", tiny.export_dir)
        server = RecommendationServer(shipped_config(Path(model_dir), **overrides))
        server.start()
        if load:
            server.load_model()
        running = Running(server, RecommenderClient(f"127.0.0.1:{server.port}"))
        started.append(running)
        return running

    yield start
    for running in started:
        running.client.close()
        running.server.stop(0, 0)


@pytest.fixture
def start_model_only_server(start_server: Callable[..., Running]) -> Callable[..., Running]:
    """start_server with the online layer off: Recommend answers are the model's alone, so
    they can be checked against its scores exactly."""

    def start(load: bool = True, **overrides: object) -> Running:
        return start_server(load, **{"online": False, **overrides})

    return start


@pytest.fixture
def served(start_server: Callable[..., Running]) -> Running:
    """A loaded server in the shipped configuration (online layer on)."""
    return start_server()


@pytest.fixture
def served_model_only(start_model_only_server: Callable[..., Running]) -> Running:
    """A loaded server with the online layer off: answers are the model's alone."""
    return start_model_only_server()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test ca", ca_key, "test ca", ca_key, ca=True)
    files = {"ca": _write(root / "ca.pem", ca)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[who] = _write(root / f"{who}.pem", _issue(who, key, "test ca", ca_key, ca=False))
        files[f"{who}_key"] = _write(root / f"{who}.key", key=key)
    return files
