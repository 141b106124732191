"""Bloom embeddings (Serrà & Karatzoglou, RecSys 2017): GRU4Rec over m-bit item codes.

Every item gets k positions in an m-bit vector from pybloom-live's hash functions, so the
item-wide input table and output layer shrink to m rows.

- Input: an item's representation is the sum of its k rows of an m-row table, which is what
  its binary Bloom vector times that table computes (times 1/k with bloom_item_step, the
  default, so an optimiser step moves an item one row-step, not k; docs/bloom.md).
- Output: the network scores the m positions; log-softmax over them gives log-probabilities,
  and an item's score is the sum of the log-probabilities at its k positions (the paper's
  likelihood of the item's Bloom vector).

    cfg = Config(bloom_bits=0.25, bloom_hashes=3, bloom_on="both")   # m = n_items / 4
    model = BloomGRU4Rec(n_items, cfg)     # same interface as model.GRU4Rec

The position table (n_items, k) is a buffer of the module: it is saved with the weights and
exported with the ONNX graph, so a service still sends plain item indices.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from pybloom_live.pybloom import make_hashfuncs
from torch import nn

from ..config import BLOOM_ON, Config
from .gru import (
    Dropout,
    SessionModel,
    TableInputGRUCell,
    glorot_uniform_,
    gru_cells,
    run_cells,
    stack_shapes,
)


def resolve_bits(bloom_bits: float, n_items: int, n_hashes: int) -> int:
    """The number of bits m actually used.

    bloom_bits > 1 is m itself; 0 < bloom_bits <= 1 is a ratio of `n_items` (1 bit or
    fewer could never hold k positions, so 1.0 means m = n_items). m is rounded
    down to a multiple of k because pybloom-live splits a filter into k equal slices, one
    per hash function, which also keeps an item's k positions distinct."""
    if n_hashes < 1:
        raise ValueError(f"bloom_hashes={n_hashes} must be at least 1")
    if bloom_bits <= 0:
        raise ValueError(f"bloom_bits={bloom_bits} must be positive to use Bloom embeddings")
    wanted = round(bloom_bits * n_items) if bloom_bits <= 1 else int(bloom_bits)
    per_slice = wanted // n_hashes
    if per_slice < 1:
        raise ValueError(
            f"bloom_bits={bloom_bits} gives {wanted} bits for {n_items} items, fewer than "
            f"bloom_hashes={n_hashes}; raise bloom_bits or lower bloom_hashes"
        )
    return per_slice * n_hashes


def bloom_positions(keys: Iterable[object], n_bits: int, n_hashes: int) -> np.ndarray:
    """int64 (n_keys, k): the bits pybloom-live's BloomFilter sets for each key.

    Hash j of a key picks a bit in slice j, [j * m/k, (j + 1) * m/k). Keys are hashed as
    their UTF-8 text (an int i as str(i)), with pybloom-live's salted hashes, so the table
    is the same on every run and machine."""
    if n_bits % n_hashes:
        raise ValueError(f"n_bits={n_bits} must be a multiple of n_hashes={n_hashes}")
    per_slice = n_bits // n_hashes
    hash_key, _ = make_hashfuncs(n_hashes, per_slice)
    offsets = np.arange(n_hashes, dtype=np.int64) * per_slice
    rows = [np.fromiter(hash_key(key), dtype=np.int64, count=n_hashes) for key in keys]
    if not rows:
        return np.zeros((0, n_hashes), dtype=np.int64)
    return np.stack(rows) + offsets


def recover_scores(log_probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Item scores from position log-probabilities: log_probs (B, m), positions (N, k)
    -> (B, N), score[b, i] = sum_j log_probs[b, positions[i, j]].

    Summed one hash at a time so no (B, N, k) tensor is built (N may be millions)."""
    scores = log_probs.index_select(1, positions[:, 0])
    for j in range(1, positions.shape[1]):
        scores = scores + log_probs.index_select(1, positions[:, j])
    return scores


class BloomInputGRUCell(TableInputGRUCell):
    """First GRU layer for a binary m-bit input: the input gates' pre-activations are the
    sum of the active bits' rows of an (m, 3H) table (a multi-hot vector times W_x)."""

    row_scale = 1.0  # what the rows' sum is multiplied by (BloomGRU4Rec sets it)

    def forward(self, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """rows: int64 (B, k) active bits; h: (B, H) -> new h (B, H)."""
        gates = self.input_gates(rows).sum(dim=1) * self.row_scale  # (B, 3H)
        return super().forward(gates, h)


class BloomGRU4Rec(SessionModel):
    """GRU4Rec with Bloom-coded input, output or both (cfg.bloom_on).

    Input modes follow GRU4Rec: constrained_embedding shares the output table as input
    embedding (only when input and output use the same code, i.e. bloom_on="both"; otherwise
    the input gets its own table of layers[-1] columns); embedding=E > 0 gives an (rows, E)
    table; else the first layer reads its gates from an (rows, 3 * layers[0]) table. rows is
    m for a Bloom-coded side and n_items for the other.

    `keys` (optional) are what gets hashed per item index, e.g. the vocabulary's item ids;
    by default the indices themselves."""

    item_positions: torch.Tensor  # buffer (n_items, k) int64
    row_scale: torch.Tensor  # buffer, 0-d: 1/k with bloom_item_step, else 1

    def __init__(self, n_items: int, cfg: Config, keys: Iterable[object] | None = None):
        super().__init__()
        if cfg.bloom_on not in BLOOM_ON:
            raise ValueError(f"bloom_on={cfg.bloom_on!r} is not one of {', '.join(BLOOM_ON)}")
        self.n_items = n_items
        self.layers = tuple(cfg.layers)
        self.n_bits = resolve_bits(cfg.bloom_bits, n_items, cfg.bloom_hashes)
        self.bloom_in = cfg.bloom_on in ("input", "both")
        self.bloom_out = cfg.bloom_on in ("output", "both")
        self.exact_ce = cfg.loss == "cross-entropy"
        keys = range(n_items) if keys is None else keys
        table = bloom_positions(keys, self.n_bits, cfg.bloom_hashes)
        if len(table) != n_items:
            raise ValueError(f"got {len(table)} keys to hash for {n_items} items")
        self.register_buffer("item_positions", torch.as_tensor(table))  # (n_items, k) int64
        # Saved with the weights, so a model file always scores as it was trained
        scale = 1.0 / cfg.bloom_hashes if cfg.bloom_item_step else 1.0
        self.register_buffer("row_scale", torch.tensor(scale))
        self._build_output(n_items)
        self._build_input(n_items, cfg)
        self._start_rows_scaled(scale)
        self.drop_embed = Dropout(cfg.dropout_p_embed)
        self.drop_hidden = Dropout(cfg.dropout_p_hidden)

    def _build_output(self, n_items: int) -> None:
        rows, last = (self.n_bits if self.bloom_out else n_items), self.layers[-1]
        # Sparse row gradients unless training uses the Bloom output layer whole (the
        # softmax over m, needed by every loss but cross-entropy; see score()).
        sparse = not self.bloom_out or self.exact_ce
        self.Wy = nn.Embedding(rows, last, sparse=sparse)
        self.By = nn.Embedding(rows, 1, sparse=sparse)
        glorot_uniform_(self.Wy.weight, rows, last)
        nn.init.zeros_(self.By.weight)

    def _build_input(self, n_items: int, cfg: Config) -> None:
        rows = self.n_bits if self.bloom_in else n_items
        self.share_output = cfg.constrained_embedding and cfg.bloom_on == "both"
        if self.share_output:
            size = 0  # the input is the sum of the item's rows of Wy
        elif cfg.constrained_embedding:
            size = self.layers[-1]  # as wide as Wy, but a table of its own
        else:
            size = cfg.embedding  # 0: gates straight from the rows (BloomInputGRUCell)
        self.first = None if size or self.share_output else BloomInputGRUCell(rows, self.layers[0])
        if size:
            self.E = nn.Embedding(rows, size, sparse=True)
            glorot_uniform_(self.E.weight, rows, size)
        n_input = size or self.layers[-1]
        skip = self.first is not None
        self.cells = gru_cells(stack_shapes(n_input, self.layers, skip_first=skip))

    def _start_rows_scaled(self, scale: float) -> None:
        """Bloom-coded tables start 1/scale times their initial draw, so that scale * (sum
        of an item's k rows) is the paper's sum of the initial rows: the same model at the
        start. Row-wise Adagrad (and Adam) step a row by about the learning rate whatever
        its gradient's size, so an item's summed representation would move k steps per
        update; scaled, it moves one, as an item-wide table's row does (docs/bloom.md)."""
        if scale == 1.0:
            return
        tables = [self.Wy.weight, self.By.weight] if self.bloom_out else []
        if self.bloom_in and not self.share_output:
            tables.append(self.first.input_gates.weight if self.first else self.E.weight)
        with torch.no_grad():
            for table in tables:
                table.div_(scale)
        if self.first is not None and self.bloom_in:
            self.first.row_scale = scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model files from before bloom_item_step summed the rows unscaled
        state_dict.setdefault(prefix + "row_scale", torch.tensor(1.0))
        if self.first is not None and self.bloom_in:
            self.first.row_scale = float(state_dict[prefix + "row_scale"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _in_scale(self) -> torch.Tensor | float:
        return self.row_scale if self.bloom_in else 1.0

    def _out_scale(self) -> torch.Tensor | float:
        return self.row_scale if self.bloom_out else 1.0

    def hidden_sizes(self) -> list[int]:
        return list(self.layers)

    def input_rows(self, inputs: torch.Tensor) -> torch.Tensor:
        """int64 (B,) items -> (B, k) Bloom bits, or (B, 1) item rows without input coding."""
        return self.item_positions[inputs] if self.bloom_in else inputs[:, None]

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs: int64 (B,); hidden: per layer (B, layers[i]); targets: int64 (M,) or None.

        Returns scores (B, M), or (B, n_items) when targets is None, and the new hidden
        states. With Bloom output the scores are log-likelihoods (<= 0), else raw logits."""
        rows = self.input_rows(inputs)
        new_hidden = []
        if self.first is not None:
            x = self.drop_embed(self.first(rows, hidden[0]))
            new_hidden.append(x)
        else:
            table = self.Wy if self.share_output else self.E
            x = self.drop_embed(table(rows).sum(dim=1) * self._in_scale())  # (B, n_input)
        x, rest = run_cells(self.cells, x, hidden[len(new_hidden) :], self.drop_hidden)
        return self.score(x, targets), new_hidden + rest

    def score(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, layers[-1]) -> scores (B, M) for `targets`, or (B, n_items).

        Bloom output: the log-likelihood sum_j log softmax(o)[p_j] of each item's positions
        p_1..p_k. It equals sum_j o[p_j] - k * logsumexp(o), where the last term is the same
        for every item of a row; cross-entropy over a row's candidates cancels it exactly. So
        when training with cross-entropy the scores of the candidates are the sums of their
        position logits alone: the same loss and gradients, without the m-wide output layer
        (which would cost as much as the item-wide layer Bloom embeddings remove)."""
        if not self.bloom_out:
            if targets is None:
                return torch.addmm(self.By.weight.T, h, self.Wy.weight.T)
            return torch.addmm(self.By(targets).T, h, self.Wy(targets).T)
        if targets is not None and self.training and self.exact_ce:
            rows = self.item_positions[targets]  # (M, k)
            weight = self.Wy(rows).sum(dim=1)  # (M, H): sum_j o[p_j] = h . sum_j W[p_j]
            return torch.addmm(self.By(rows).sum(dim=1).T, h, weight.T) * self.row_scale
        logits = torch.addmm(self.By.weight.T, h, self.Wy.weight.T) * self.row_scale  # (B, m)
        log_probs = F.log_softmax(logits, dim=1)
        positions = self.item_positions if targets is None else self.item_positions[targets]
        return recover_scores(log_probs, positions)
