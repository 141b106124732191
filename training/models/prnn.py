"""p-RNN (Hidasi et al., RecSys 2016): session GRUs that also read each item's image features.

Architectures (cfg.architecture; "id" is plain model.GRU4Rec):
- "feature":  one GRU whose input is the clicked item's feature vector;
- "concat":   one GRU whose input is the one-hot item ID and the feature vector side by side;
- "parallel": a GRU4Rec over item IDs and a second GRU over features (cfg.feature_layers);
              each has its own block of output weights, and an item's score is the sum of
              the two blocks' scores, i.e. one output layer over the joined hidden states.

Training strategies for "parallel" (cfg.strategy), via the parameter-group hooks the
training loop calls (gru.SessionModel's `parameter_groups`, `active_groups`, `n_epochs_total`):
- "simultaneous": both subnets are updated at every step;
- "alternating":  epochs alternate, ID subnet first; the other subnet is frozen;
- "interleaving": mini-batches alternate between the subnets;
- "residual":     the ID subnet trains n_epochs alone, then the feature subnet trains
                  n_epochs on what the frozen ID subnet gets wrong (2 * n_epochs in all).
                  Its output block starts at zero, so in the first phase the model is
                  exactly the ID subnet.

Per-item features (cfg.features, a .npy in vocabulary order, see training.models.features) are
standardised per column and kept as a buffer, so saved and exported models carry them and
a caller still only sends item indices.

    cfg = Config(architecture="parallel", strategy="residual", features="features.npy")
    model = PRNN(n_items, cfg)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import STRATEGIES, Config
from .gru import (
    ALL,
    Dropout,
    SessionModel,
    glorot_uniform_,
    gru_cells,
    gru_update,
    init_gate_blocks_,
    run_cells,
)
from .gru4rec import GRU4Rec

ARCHITECTURES = ("feature", "concat", "parallel")
SUBNETS = ("id", "feature")  # training order for the alternating strategies


def load_item_features(path: str | Path, n_items: int) -> torch.Tensor:
    """float32 (n_items, d) standardised features from a .npy file in vocabulary order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"features file {path} not found; make one with `python -m training.models.features`"
        )
    raw = np.load(path, mmap_mode="r")
    if raw.ndim != 2 or raw.shape[0] != n_items:
        raise ValueError(
            f"{path} holds an array of shape {raw.shape}; expected ({n_items}, d), one row per "
            "item in vocabulary order. Extract features again for this training set"
        )
    return standardise(torch.from_numpy(np.array(raw, dtype=np.float32)))


def standardise(features: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per column (constant columns become 0): CNN feature scales
    vary a lot, and the GRU's Glorot initialisation expects inputs of unit size."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, keepdim=True)
    return ((features - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))).float()


class FeatureGRU(nn.Module):
    """A GRU stack whose first layer reads the item's feature vector and, optionally, its
    one-hot ID, with its own (n_items, layers[-1]) output block and optional item bias."""

    def __init__(
        self,
        n_items: int,
        n_features: int,
        layers: tuple[int, ...],
        cfg: Config,
        with_id: bool,
        with_bias: bool,
        zero_output: bool = False,
    ):
        super().__init__()
        self.layers, h0, last = layers, layers[0], layers[-1]
        self.project = nn.Linear(n_features, 3 * h0)  # W_x of the feature input, with bias
        init_gate_blocks_(self.project.weight, n_features, h0)
        nn.init.zeros_(self.project.bias)
        self.id_gates = nn.Embedding(n_items, 3 * h0, sparse=True) if with_id else None
        if self.id_gates is not None:
            init_gate_blocks_(self.id_gates.weight, n_items, h0, dim=1)
        self.weight_hh = nn.Parameter(torch.empty(3 * h0, h0))
        init_gate_blocks_(self.weight_hh, h0, h0)
        self.cells = gru_cells(list(zip(layers[:-1], layers[1:], strict=True)))  # layers 2..
        self.Wy = nn.Embedding(n_items, last, sparse=True)
        if zero_output:
            nn.init.zeros_(self.Wy.weight)
        else:
            glorot_uniform_(self.Wy.weight, n_items, last)
        self.By = nn.Embedding(n_items, 1, sparse=True) if with_bias else None
        if self.By is not None:
            nn.init.zeros_(self.By.weight)
        self.drop_embed = Dropout(cfg.dropout_p_embed)
        self.drop_hidden = Dropout(cfg.dropout_p_hidden)

    def forward(
        self, items: torch.Tensor, features: torch.Tensor, hidden: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """items int64 (B,), features (B, d), hidden per layer (B, H_i) -> (top (B, H_last),
        new hidden); the first layer has the same gate equations as torch.nn.GRUCell."""
        gx = self.project(features)  # (B, 3H)
        if self.id_gates is not None:
            gx = gx + self.id_gates(items)
        h = hidden[0]
        first = self.drop_embed(gru_update(gx, h @ self.weight_hh.T, h))
        x, rest = run_cells(self.cells, first, hidden[1:], self.drop_hidden)
        new_hidden = [first, *rest]
        return x, new_hidden

    def score(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """h (B, H_last) -> (B, M) for targets (M,), or (B, n_items)."""
        weight = self.Wy.weight if targets is None else self.Wy(targets)
        scores = h @ weight.T
        if self.By is not None:
            scores = scores + (self.By.weight if targets is None else self.By(targets)).T
        return scores


class PRNN(SessionModel):
    """A gru.SessionModel like model.GRU4Rec: PRNN(n_items, cfg), init_hidden, forward.

    `features` (n_items, d) overrides cfg.features (then taken as given, not standardised)."""

    item_features: torch.Tensor  # buffer (n_items, d) float32

    def __init__(self, n_items: int, cfg: Config, features: torch.Tensor | None = None):
        super().__init__()
        if cfg.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={cfg.architecture!r} is not one of {', '.join(ARCHITECTURES)} "
                "(or 'id' for plain GRU4Rec)"
            )
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"strategy={cfg.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if cfg.strategy != "simultaneous" and cfg.architecture != "parallel":
            raise ValueError(
                f"strategy={cfg.strategy} trains the subnets of architecture=parallel in turns; "
                f"architecture={cfg.architecture} has one network, use strategy=simultaneous"
            )
        if features is None:
            if not cfg.features:
                raise ValueError(
                    f"architecture={cfg.architecture} needs item features: set features=PATH "
                    "to a .npy made by `python -m training.models.features`"
                )
            features = load_item_features(cfg.features, n_items)
        if features.shape[0] != n_items:
            raise ValueError(f"features have {features.shape[0]} rows for {n_items} items")
        self.register_buffer("item_features", torch.as_tensor(features, dtype=torch.float32))
        self.architecture, self.strategy, self.n_items = cfg.architecture, cfg.strategy, n_items
        self._phase_epochs = max(cfg.n_epochs, 1)  # residual: epochs per subnet
        d = int(self.item_features.shape[1])
        self.id_net: GRU4Rec | None = None
        if self.architecture == "parallel":
            self.id_net = GRU4Rec(n_items, cfg)
            residual = cfg.strategy == "residual"
            self.feature_net = FeatureGRU(
                n_items, d, tuple(cfg.feature_layers), cfg, False, False, zero_output=residual
            )
        else:
            with_id = self.architecture == "concat"
            self.feature_net = FeatureGRU(n_items, d, tuple(cfg.layers), cfg, with_id, True)

    def hidden_sizes(self) -> list[int]:
        """ID subnet's layers first (parallel only), then the feature GRU's."""
        ids = list(self.id_net.layers) if self.id_net is not None else []
        return ids + list(self.feature_net.layers)

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs int64 (B,), hidden as init_hidden, targets int64 (M,) or None -> scores
        (B, M) or (B, n_items) (raw logits), new hidden."""
        n_id = len(self.id_net.layers) if self.id_net is not None else 0
        top, feat_hidden = self.feature_net(inputs, self.item_features[inputs], hidden[n_id:])
        scores = self.feature_net.score(top, targets)
        if self.id_net is None:
            return scores, feat_hidden
        id_scores, id_hidden = self.id_net(inputs, hidden[:n_id], targets)
        return id_scores + scores, id_hidden + feat_hidden

    # --- gru.SessionModel's parameter-group hooks, as the strategies need them ---

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"id": ..., "feature": ...} for the parallel architecture, else {"all": ...}."""
        if self.id_net is None:
            return {ALL: list(self.parameters())}
        return {
            "id": list(self.id_net.parameters()),
            "feature": list(self.feature_net.parameters()),
        }

    def active_groups(self, epoch: int, step: int) -> list[str]:
        """The groups the optimiser may update at this (0-based) epoch and step."""
        if self.id_net is None:
            return [ALL]
        if self.strategy == "alternating":
            return [SUBNETS[epoch % 2]]
        if self.strategy == "interleaving":
            return [SUBNETS[step % 2]]
        if self.strategy == "residual":
            return [SUBNETS[min(epoch // self._phase_epochs, 1)]]
        return list(SUBNETS)

    def n_epochs_total(self, cfg: Config) -> int:
        """Residual training runs each subnet for cfg.n_epochs, one after the other."""
        return 2 * cfg.n_epochs if self.strategy == "residual" else cfg.n_epochs
