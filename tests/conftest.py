"""Shared fixtures: small synthetic sessions with real sequential structure; `tool` for
external tools (tests/tools.py: skipped locally, failed on CI when missing); and the `gpu`
marker, which skips without CUDA, on CI too (CI machines have no GPU)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tests.tools import require_tool
from training.data.logs import Sessions

# The models in the tests are tiny: a second intra-op thread only adds synchronisation, and
# on a busy machine that costs more than the work itself.
torch.set_num_threads(1)


def markov_sessions(n_items: int, n_sessions: int, seed: int, follow: float = 0.8) -> Sessions:
    """Sessions where each click is, with probability `follow`, one of three fixed successors
    of the previous item, else a uniformly random item."""
    rng = np.random.default_rng(seed)
    successors = np.random.default_rng(12345).integers(0, n_items, size=(n_items, 3))
    items, offsets = [], [0]
    for _ in range(n_sessions):
        item = int(rng.integers(n_items))
        session = [item]
        for _ in range(int(rng.integers(2, 10)) - 1):
            follows = rng.random() < follow
            item = int(successors[item, rng.integers(3)] if follows else rng.integers(n_items))
            session.append(item)
        items.extend(session)
        offsets.append(len(items))
    return Sessions(
        np.asarray(items, dtype=np.int64),
        np.asarray(offsets, dtype=np.int64),
        np.array([f"s{i}" for i in range(n_sessions)], dtype=object),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """`tool("hadolint")` -> absolute path, or skip (fail on CI); see tests/tools.py."""
    return require_tool


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip cleanly where CUDA is not available, CI included."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu; CI machines have none)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
