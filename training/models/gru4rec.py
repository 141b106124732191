"""GRU4Rec: a GRU over the session's clicks that scores every item as the next one.

Three input modes, as in the reference:
- constrained_embedding=True: the input embedding *is* the output weight matrix Wy (shared),
- embedding=E > 0: a separate (n_items, E) input embedding,
- otherwise one-hot input: the first GRU layer reads its gate inputs straight from an
  (n_items, 3 * layers[0]) table, which is what a one-hot vector times W_x computes.

Item-wide tables are sparse-gradient embeddings, so a step only touches the rows of the
items in the mini-batch; `optim.IndexedAdagrad` updates just those rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .gru import (
    Dropout,
    SessionModel,
    TableInputGRUCell,
    glorot_uniform_,
    gru_cells,
    run_cells,
    stack_shapes,
)


class _GatherRows(torch.autograd.Function):
    """weight[unique][inverse] whose gradient is a sparse tensor with unique, sorted rows.

    An nn.Embedding hands the optimiser one gradient row per lookup, which it must sort and
    merge (coalesce) every step; deduplicating the few thousand indices first is cheaper."""

    @staticmethod
    def forward(ctx, weight, unique, inverse):  # type: ignore[override]
        ctx.save_for_backward(unique, inverse)
        ctx.shape = weight.shape
        return weight.index_select(0, unique).index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        unique, inverse = ctx.saved_tensors
        rows = grad.new_zeros(len(unique), grad.shape[1]).index_add_(0, inverse, grad)
        sparse = torch.sparse_coo_tensor(
            unique[None], rows, ctx.shape, is_coalesced=True, check_invariants=False
        )
        return sparse, None, None


def gather_rows(table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    """table.weight[index] (len(index), dim); a row-sparse, pre-merged gradient in training.

    Gather each table at most once per training step: the optimiser trusts its rows unique."""
    if not torch.is_grad_enabled() or not table.weight.requires_grad:
        return table.weight.index_select(0, index)
    unique, inverse = torch.unique(index, return_inverse=True)
    # autograd drops the "coalesced" flag on the way to .grad; this tells the optimiser
    # the rows are unique (each table is gathered once per step)
    table.weight.unique_grad_rows = True  # type: ignore[attr-defined]
    return _GatherRows.apply(table.weight, unique, inverse)


def output_scores(
    Wy: nn.Embedding,
    By: nn.Embedding,
    h: torch.Tensor,
    targets: torch.Tensor | None = None,
    out_vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """h @ Wy.T + By of the `targets` rows: (B, layers[-1]) -> (B, M), or (B, n_items) for
    every item; out_vectors: the targets' Wy rows when already gathered."""
    if targets is None:
        return torch.addmm(By.weight.T, h, Wy.weight.T)
    if out_vectors is None:
        out_vectors = gather_rows(Wy, targets)
    return torch.addmm(gather_rows(By, targets).T, h, out_vectors.T)


class OneHotGRUCell(TableInputGRUCell):
    """First GRU layer for one-hot input: input gate pre-activations are a table row."""

    def forward(self, items: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """items int64 (B,), h (B, H) -> new h (B, H)."""
        return super().forward(gather_rows(self.input_gates, items), h)


class GRU4Rec(SessionModel):
    def __init__(self, n_items: int, cfg: Config):
        super().__init__()
        self.n_items = n_items
        self.layers = tuple(cfg.layers)
        self.constrained = cfg.constrained_embedding
        self.embedding_size = 0 if self.constrained else cfg.embedding
        self.one_hot = not self.constrained and self.embedding_size == 0
        last = self.layers[-1]
        self.Wy = nn.Embedding(n_items, last, sparse=True)  # output item vectors
        self.By = nn.Embedding(n_items, 1, sparse=True)  # output item bias
        glorot_uniform_(self.Wy.weight, n_items, last)
        nn.init.zeros_(self.By.weight)
        if self.embedding_size:
            self.E = nn.Embedding(n_items, self.embedding_size, sparse=True)
            glorot_uniform_(self.E.weight, n_items, self.embedding_size)
        self.first = OneHotGRUCell(n_items, self.layers[0]) if self.one_hot else None
        n_input = last if self.constrained else self.embedding_size
        self.cells = gru_cells(stack_shapes(n_input, self.layers, skip_first=self.one_hot))
        self.drop_embed = Dropout(cfg.dropout_p_embed)
        self.drop_hidden = Dropout(cfg.dropout_p_hidden)

    def hidden_sizes(self) -> list[int]:
        return list(self.layers)

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs: int64 (B,); hidden: per layer (B, layers[i]); targets: int64 (M,) or None.

        Returns raw scores (B, M), or (B, n_items) for every item when targets is None, and
        the new hidden states. As in the reference, the dropped-out layer outputs are what
        the next step sees as hidden state during training."""
        new_hidden = []
        out_vectors = None
        if self.one_hot:
            x = self.drop_embed(self.first(inputs, hidden[0]))
            new_hidden.append(x)
        elif self.constrained:
            if targets is None:
                x = self.Wy.weight.index_select(0, inputs)
            else:  # one lookup for inputs and targets, so Wy gets a single merged gradient
                rows = gather_rows(self.Wy, torch.cat([inputs, targets]))
                # split, not slicing: its backward is one cat, not two zero-filled copies
                x, out_vectors = rows.split([len(inputs), len(targets)])
            x = self.drop_embed(x)
        else:
            x = self.drop_embed(gather_rows(self.E, inputs))
        x, rest = run_cells(self.cells, x, hidden[len(new_hidden) :], self.drop_hidden)
        return self.score(x, targets, out_vectors), new_hidden + rest

    def score(
        self,
        h: torch.Tensor,
        targets: torch.Tensor | None = None,
        out_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h: (B, layers[-1]) -> scores (B, M) for `targets`, or (B, n_items)."""
        return output_scores(self.Wy, self.By, h, targets, out_vectors)
