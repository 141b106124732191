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

import math

import torch
from torch import nn

from .config import Config


def _glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _init_gru_weights_(weight: torch.Tensor, n_input: int, n_hidden: int) -> None:
    """Gate blocks stacked along dim 0 ((3H, in) GRUCell layout), each Glorot-uniform on
    its own (in, H) shape, like the reference's compatibility initialisation."""
    for block in weight.chunk(3, dim=0):
        _glorot_uniform_(block, n_input, n_hidden)


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


class OneHotGRUCell(nn.Module):
    """First GRU layer for one-hot input: input gate pre-activations come from a table row.

    Same gate equations and (r, z, n) order as torch.nn.GRUCell."""

    def __init__(self, n_items: int, n_hidden: int):
        super().__init__()
        self.input_gates = nn.Embedding(n_items, 3 * n_hidden, sparse=True)  # W_x rows
        self.weight_hh = nn.Parameter(torch.empty(3 * n_hidden, n_hidden))
        self.bias = nn.Parameter(torch.zeros(3 * n_hidden))
        n = n_hidden
        for i in range(3):
            _glorot_uniform_(self.input_gates.weight[:, i * n : (i + 1) * n], n_items, n)
        _init_gru_weights_(self.weight_hh, n_hidden, n_hidden)

    def forward(self, items: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gx = gather_rows(self.input_gates, items) + self.bias  # (B, 3H)
        return gru_update(gx, h @ self.weight_hh.T, h)


def gru_update(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step from gate pre-activations, torch.nn.GRUCell's equations.

    gx: input part (B, 3H) with the bias, gh: h @ W_h^T (B, 3H), in (r, z, n) order."""
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


class GRU4Rec(nn.Module):
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
        _glorot_uniform_(self.Wy.weight, n_items, last)
        nn.init.zeros_(self.By.weight)
        if self.embedding_size:
            self.E = nn.Embedding(n_items, self.embedding_size, sparse=True)
            _glorot_uniform_(self.E.weight, n_items, self.embedding_size)
        self.first = OneHotGRUCell(n_items, self.layers[0]) if self.one_hot else None
        n_input = last if self.constrained else self.embedding_size
        cells = []
        for i in range(1 if self.one_hot else 0, len(self.layers)):
            n_in = self.layers[i - 1] if i > 0 else n_input
            cell = nn.GRUCell(n_in, self.layers[i])
            _init_gru_weights_(cell.weight_ih, n_in, self.layers[i])
            _init_gru_weights_(cell.weight_hh, self.layers[i], self.layers[i])
            nn.init.zeros_(cell.bias_ih)
            nn.init.zeros_(cell.bias_hh)
            cells.append(cell)
        self.cells = nn.ModuleList(cells)
        self.drop_embed = nn.Dropout(cfg.dropout_p_embed)
        self.drop_hidden = nn.Dropout(cfg.dropout_p_hidden)

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> list:
        device = device or self.Wy.weight.device
        return [torch.zeros(batch_size, n, device=device) for n in self.layers]

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
        offset = len(new_hidden)
        for i, cell in enumerate(self.cells):
            x = self.drop_hidden(cell(x, hidden[i + offset]))
            new_hidden.append(x)
        return self.score(x, targets, out_vectors), new_hidden

    def score(
        self,
        h: torch.Tensor,
        targets: torch.Tensor | None = None,
        out_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h: (B, layers[-1]) -> scores (B, M) for `targets`, or (B, n_items)."""
        if targets is None:
            return torch.addmm(self.By.weight.T, h, self.Wy.weight.T)
        if out_vectors is None:
            out_vectors = gather_rows(self.Wy, targets)
        return torch.addmm(gather_rows(self.By, targets).T, h, out_vectors.T)


def build_model(
    n_items: int, cfg: Config, state_dict: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """GRU4Rec, or its Bloom-compressed or image-feature (p-RNN) variants as `cfg` asks.

    `state_dict`, when rebuilding a saved model, supplies the item features, so the p-RNN
    does not need the features file it was trained from."""
    if cfg.bloom_bits > 0 and cfg.architecture != "id":
        raise ValueError(
            "bloom_bits and architecture are not supported together; "
            "use Bloom compression with architecture=id"
        )
    if cfg.bloom_bits > 0:
        from .bloom import BloomGRU4Rec

        return BloomGRU4Rec(n_items, cfg)
    if cfg.architecture != "id":
        from .prnn import PRNN

        features = state_dict.get("item_features") if state_dict is not None else None
        return PRNN(n_items, cfg, features=features)
    return GRU4Rec(n_items, cfg)
