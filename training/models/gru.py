"""The GRU stack every session model here is built from, and the interface they share.

One place for the gate equations, the reference's initialisation and the layer loop, so
model.GRU4Rec, bloom.BloomGRU4Rec and prnn.PRNN differ only in how an item enters the
first layer and how items are scored:

    cells = gru_cells([(100, 100), (100, 50)])       # layers 2.. as torch.nn.GRUCell
    x, hidden = run_cells(cells, x, hidden, dropout)  # x (B, 100) -> (B, 50)

`SessionModel` is what the training loop relies on: init_hidden and forward, plus the
parameter-group hooks that p-RNN's training strategies override (one group "all" by
default). Nothing here imports another model module, so none of them import each other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config

ALL = "all"  # the one parameter group of a model trained as a whole


def glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def init_gate_blocks_(weight: torch.Tensor, n_input: int, n_hidden: int, dim: int = 0) -> None:
    """The three gate blocks of `weight` (stacked along `dim`), each Glorot-uniform on its own
    (in, H) shape, like the reference's compatibility initialisation."""
    for block in weight.data.chunk(3, dim=dim):
        glorot_uniform_(block, n_input, n_hidden)


def dropout_draws(like: torch.Tensor, p: float) -> torch.Tensor | None:
    """The uniform draws a dropout mask is made from, shaped like `like`; None when p is 0."""
    return None if p <= 0 else torch.rand_like(like, requires_grad=False)


def mask_from_draws(draws: torch.Tensor, p: float) -> torch.Tensor:
    """1 / (1 - p) where the draw is at least p, else 0 (in place on `draws`)."""
    return draws.ge_(p).div_(1.0 - p)


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor | None:
    """What training-time dropout multiplies by: 1 / (1 - p) with probability 1 - p, else 0,
    shaped like `like`; None when p is 0. Uniform draws compared with p take a third of the
    time of torch's Bernoulli sampler at a step's sizes (32 x 100) on the CPU."""
    draws = dropout_draws(like, p)
    return None if draws is None else mask_from_draws(draws, p)


class Dropout(nn.Module):
    """nn.Dropout with dropout_mask's draws, so the hand-written step (fused.py) and
    autograd drop the same units from the same seed."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = dropout_mask(x, self.p) if self.training else None
        return x if mask is None else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def gru_update(gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step from gate pre-activations, torch.nn.GRUCell's equations.

    gx: input part (B, 3H) with the bias, gh: h @ W_h^T (B, 3H), in (r, z, n) order."""
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


class TableInputGRUCell(nn.Module):
    """First GRU layer for one-hot or multi-hot item input: its input-gate pre-activations
    are rows of an (n_rows, 3H) table, which is what a one-hot (or binary) vector times W_x
    computes. The caller gathers (and sums) the rows, so it decides how the table's gradient
    is formed; this cell adds the bias and runs the GRU step.

    Same gate equations and (r, z, n) order as torch.nn.GRUCell."""

    def __init__(self, n_rows: int, n_hidden: int):
        super().__init__()
        self.input_gates = nn.Embedding(n_rows, 3 * n_hidden, sparse=True)  # W_x rows
        self.weight_hh = nn.Parameter(torch.empty(3 * n_hidden, n_hidden))
        self.bias = nn.Parameter(torch.zeros(3 * n_hidden))
        init_gate_blocks_(self.input_gates.weight, n_rows, n_hidden, dim=1)
        init_gate_blocks_(self.weight_hh, n_hidden, n_hidden)

    def forward(self, gx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """gx (B, 3H): the input's table rows (summed); h (B, H) -> new h (B, H)."""
        return gru_update(gx + self.bias, h @ self.weight_hh.T, h)


def gru_cells(shapes: list[tuple[int, int]]) -> nn.ModuleList:
    """torch.nn.GRUCell layers for (n_in, n_out) pairs, initialised like the reference."""
    cells = nn.ModuleList()
    for n_in, n_out in shapes:
        cell = nn.GRUCell(n_in, n_out)
        init_gate_blocks_(cell.weight_ih, n_in, n_out)
        init_gate_blocks_(cell.weight_hh, n_out, n_out)
        nn.init.zeros_(cell.bias_ih)
        nn.init.zeros_(cell.bias_hh)
        cells.append(cell)
    return cells


def stack_shapes(n_input: int, layers: tuple[int, ...], skip_first: bool) -> list[tuple[int, int]]:
    """(n_in, n_out) of the nn.GRUCell layers of a stack of `layers` fed n_input columns;
    `skip_first` when the first layer is a GatedInputGRUCell instead."""
    sizes = (n_input, *layers)
    start = 1 if skip_first else 0
    return [(sizes[i], sizes[i + 1]) for i in range(start, len(layers))]


def run_cells(
    cells: nn.ModuleList, x: torch.Tensor, hidden: list[torch.Tensor], dropout: nn.Module
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Feed x (B, n_in) through the cells with their states hidden[i] (B, H_i). As in the
    reference, the dropped-out outputs are what the next step sees as its state."""
    new_hidden = []
    for cell, h in zip(cells, hidden, strict=True):
        x = dropout(cell(x, h))
        new_hidden.append(x)
    return x, new_hidden


class SessionModel(nn.Module):
    """What training, evaluation and export use of a session model.

    forward(inputs (B,), hidden, targets (M,) | None) -> (scores (B, M) or (B, n_items), new
    hidden); init_hidden(B) -> per-layer zero states. The parameter-group hooks let a model
    train parts of itself in turns (p-RNN); the defaults train everything at every step."""

    n_items: int

    def hidden_sizes(self) -> list[int]:
        raise NotImplementedError

    def init_hidden(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> list[torch.Tensor]:
        if device is None:
            device = next(iter(self.parameters())).device
        return [torch.zeros(batch_size, n, device=device) for n in self.hidden_sizes()]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of parameters, each with an optimiser of its own."""
        return {ALL: list(self.parameters())}

    def active_groups(self, epoch: int, step: int) -> list[str]:
        """The groups the optimiser updates at this (0-based) epoch and step."""
        return list(self.parameter_groups())

    def n_epochs_total(self, cfg: Config) -> int:
        return cfg.n_epochs
