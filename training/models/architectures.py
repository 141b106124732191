"""Which network a Config asks for: GRU4Rec, its Bloom-compressed variant, a p-RNN or HRNN.

    model = build_model(n_items, cfg)                  # a gru.SessionModel
    model = build_model(n_items, cfg, state_dict)      # rebuilding a saved model

The one module that knows them all, so the model modules need not know each other.
"""

from __future__ import annotations

import torch

from ..config import Config
from .bloom import BloomGRU4Rec
from .gru import SessionModel
from .gru4rec import GRU4Rec
from .hrnn import HRNN
from .prnn import PRNN


def build_model(
    n_items: int, cfg: Config, state_dict: dict[str, torch.Tensor] | None = None
) -> SessionModel:
    """GRU4Rec, or its Bloom-compressed or image-feature (p-RNN) variants as `cfg` asks.

    `state_dict`, when rebuilding a saved model, supplies the item features, so the p-RNN
    does not need the features file it was trained from."""
    if cfg.bloom_bits > 0 and cfg.architecture != "id":
        raise ValueError(
            "bloom_bits and architecture are not supported together; "
            "use Bloom compression with architecture=id"
        )
    if cfg.bloom_bits > 0:
        return BloomGRU4Rec(n_items, cfg)
    if cfg.architecture == "hrnn":  # its user GRU needs user-parallel batches (hrnn_fit.py)
        return HRNN(n_items, cfg)
    if cfg.architecture != "id":
        features = state_dict.get("item_features") if state_dict is not None else None
        return PRNN(n_items, cfg, features=features)
    return GRU4Rec(n_items, cfg)
