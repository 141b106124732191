"""Fixtures: a small GRU4Rec with random weights exported to ONNX, and real servers on
127.0.0.1 with ephemeral ports (gRPC and metrics), stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from service.client import RecommenderClient
from service.config import ServiceConfig
from service.server import RecommendationServer
from training.architectures import build_model
from training.config import Config
from training.data import ItemVocab
from training.export import export_model
from training.train import save_model

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


@pytest.fixture
def start_server(tiny: TinyModel) -> Iterator[Callable[..., Running]]:
    """start_server(load=True, **config overrides) -> Running; all stopped at teardown.
    The online layer is off unless asked for, so answers are the model's alone."""
    started: list[Running] = []

    def start(load: bool = True, **overrides: object) -> Running:
        settings: dict = dict(
            model_dir=tiny.export_dir, host="127.0.0.1", port=0, metrics_port=0, drain_s=0.0,
            online=False,
        )  # fmt: skip
        config = ServiceConfig(**{**settings, **overrides})
        server = RecommendationServer(config)
        server.start()
        if load:
            server.load_model()
        running = Running(server, RecommenderClient(f"127.0.0.1:{server.port}"))
        started.append(running)
        return running

    yield start
    for running in started:
        running.client.close()
        running.server.stop(0)


@pytest.fixture
def served(start_server: Callable[..., Running]) -> Running:
    """A loaded server with the default configuration."""
    return start_server()
