"""GRU4Rec's training step written out by hand: forward, backward and the row-sparse Adagrad.

A step at the reference's sizes (32 sessions, 100 units, ~2,080 output items) is three small
matrix products and a GRU step; through autograd, sparse COO gradients and a generic
optimiser most of its time went to bookkeeping around them. This module computes the same
step with a few dozen tensor operations and no autograd graph:

- every item table is read once per step at its unique rows (kernels.UniqueRows, no sort),
  and the output layer scores those unique rows only (fewer rows in the matmuls, and the
  gradient comes out already merged per row);
- cross-entropy runs on those U columns: duplicate target columns differ only in logQ, so
  they fold into a per-item weight (see _cross_entropy); the other losses expand the columns
  and run through autograd on the score matrix alone;
- the GRU layers' backward is the closed form of torch.nn.GRUCell's (one step of truncated
  backpropagation, as the reference detaches the state every step);
- the Adagrad update touches exactly the rows the step read, the output weights and bias
  in one pass.

On the CPU the loops that tensor operations did badly (the rows' read, the GRU output and
dropout, the gates' backward, the softmax's bookkeeping, the row update) are compiled
(training/fit/kernels.py); on a GPU, or without numba, the same formulas run as tensor
operations.

    step = FusedStep(model, optimizer, cfg)        # model.GRU4Rec, optim.IndexedAdagrad
    loss, hidden = step(inputs, targets, hidden, log_q)

It matches the autograd path to float32 rounding (tests/training/fit/test_fused.py). Models
with parameter groups, Bloom codes or image features, and Adam, train through autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..models.gru import dropout_draws, dropout_mask, mask_from_draws
from ..models.gru4rec import GRU4Rec
from . import kernels
from .distributed import GradientSync, RowGradient
from .losses import compute_loss
from .optim import IndexedAdagrad


def supports(model: nn.Module, optimizer: object, cfg: Config) -> bool:
    """Whether FusedStep can train this model: a plain GRU4Rec with the reference's Adagrad."""
    return type(model) is GRU4Rec and isinstance(optimizer, IndexedAdagrad)


@dataclass
class _Layer:
    """What one GRU layer's backward needs, all (B, H) but x_in (B, n_in)."""

    x_in: torch.Tensor | None  # the layer's input (None for the one-hot table layer)
    h_prev: torch.Tensor
    r: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor
    hn: torch.Tensor  # W_hn h + b_hn, the recurrent part of the candidate
    mask: torch.Tensor | None  # dropout mask (already scaled by 1 / (1 - p)), or None


@dataclass
class _Rows:
    """One item table's unique rows in this step: indices (U,), where each lookup landed
    (inverse), and the rows' values (U, D) read once."""

    table: nn.Parameter
    unique: torch.Tensor
    inverse: torch.Tensor
    values: torch.Tensor


class FusedStep:
    def __init__(
        self,
        model: GRU4Rec,
        optimizer: IndexedAdagrad,
        cfg: Config,
        sync: GradientSync | None = None,
    ):
        self.model, self.optimizer, self.cfg, self.sync = model, optimizer, cfg, sync
        self.p_embed, self.p_hidden = cfg.dropout_p_embed, cfg.dropout_p_hidden
        self.cells = list(model.cells)
        # the item tables in the order a step hands over their rows (the same on every rank)
        inputs = [] if model.constrained else [_input_table(model)]
        self._row_tables = [*inputs, model.By.weight, model.Wy.weight]
        tables = {id(t) for t in self._row_tables}
        self._dense_params = [p for p in model.parameters() if id(p) not in tables]
        self._unique = kernels.UniqueRows(len(model.Wy.weight))
        if model.Wy.weight.is_cpu:
            kernels.warm_up()  # before the epoch's clock starts

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        hidden: list[torch.Tensor],
        log_q: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs (B,), targets (M,) with the B positives first, hidden per layer (B, H_i),
        log_q (M,) or None -> (the loss summed over the batch, a 0-d tensor; new hidden).
        Updates the model's parameters and the optimiser's state in place."""
        m, b = self.model, len(inputs)
        if m.constrained:
            out, bias, x = self._read(m.Wy.weight, inputs, targets, m.By.weight, b)
            in_rows, target_pos = out, out.inverse[b:]
        else:
            out, bias, _ = self._read(m.Wy.weight, inputs[:0], targets, m.By.weight, 0)
            target_pos = out.inverse
            in_rows, _, x = self._read(_input_table(m), inputs, inputs[:0], None, b)
        x, layers, embed_mask = self._forward_layers(x, hidden)
        scores_unique = torch.addmm(bias.T, x, out.values.T)  # (B, U)
        # grad_bias (U,) is the score gradient's column sums; `scored` (U,) marks the rows
        # scored as targets: only they update the bias, as in the reference
        if self.cfg.loss == "cross-entropy":
            loss, grad_unique, grad_bias, scored = self._cross_entropy(
                scores_unique, target_pos, log_q
            )
        else:
            scores = scores_unique.index_select(1, target_pos)  # (B, M)
            loss, grad = self._loss_and_gradient(scores, log_q)
            grad_unique = scores.new_zeros(b, len(out.unique)).index_add_(1, target_pos, grad)
            grad_bias, scored = grad_unique.sum(0), _positions_of(target_pos, len(out.unique))
        grad_out = grad_unique.T @ x  # (U, H): every output row's gradient, merged
        grad_x = self._backward_layers(grad_unique @ out.values, layers)
        updates = self._input_rows(grad_x, embed_mask, in_rows, out, grad_out, b)
        output = (out.unique, grad_out, grad_bias[:, None], scored)
        self._apply(updates, active=True, output=output)
        return loss, self._outputs

    def _read(self, table, first, second, bias_table, n_gather):
        """The unique rows of `table` at the lookups first then second -> (_Rows, the bias
        (U, 1) at those rows or None without a bias_table, the first n_gather lookups'
        rows (n_gather, D))."""
        compiled = self._unique.read(first, second, table, bias_table, n_gather)
        if compiled is not None:
            unique, inverse, values, bias, gathered = compiled
        else:
            unique, inverse = self._unique(torch.cat([first, second]))
            values = table.detach().index_select(0, unique)
            bias = None if bias_table is None else bias_table.detach().index_select(0, unique)
            gathered = values.index_select(0, inverse[:n_gather])
        return _Rows(table, unique, inverse, values), bias, gathered

    def idle(self) -> bool:
        """A step without data, for a distributed rank that ran out of sessions: joins the
        others' gradient averaging with empty gradients and applies the common update.
        Returns whether any rank still had data (when none has, nothing was updated)."""
        updates = [
            (
                t,
                torch.zeros(0, dtype=torch.int64, device=t.device),
                t.new_zeros(0, t.shape[1]),
                None,
            )
            for t in self._row_tables
        ]
        for p in self._dense_params:
            p.grad = torch.zeros_like(p)
        return self._apply(updates, active=False)

    def _apply(self, updates: list[RowGradient], active: bool, output=None) -> bool:
        """Average over the ranks when distributed, then update rows and dense parameters.
        `output` (rows (U,), weight gradients (U, H), bias gradients (U, 1), which rows'
        bias to update (U,) bool) updates the output layer in one pass (not distributed)."""
        m = self.model
        if output is not None and self.sync is None:
            self.optimizer.update_output_rows(m.Wy.weight, m.By.weight, *output)
        elif output is not None:
            rows, grad_w, grad_b, scored = output
            updates.append((m.By.weight, rows[scored], grad_b[scored], None))
            updates.append((m.Wy.weight, rows, grad_w, None))
        if self.sync is not None:
            grads = [p.grad for p in self._dense_params]
            averaged, any_active = self.sync.dense(grads, active)
            for p, g in zip(self._dense_params, averaged, strict=True):
                p.grad = g.view_as(p)
            updates = [self.sync.rows(t, rows, g) for t, rows, g, _ in updates]
            if not any_active:
                for p in self._dense_params:
                    p.grad = None
                return False
        for table, rows, grad, current in updates:
            self.optimizer.update_rows(table, rows, grad, current)
        self.optimizer.update_dense()
        return True

    def _forward_layers(self, x: torch.Tensor, hidden: list[torch.Tensor]):
        """The GRU stack: x (B, n_in) -> top output (B, H_last), per-layer records, and the
        embedding dropout mask. Records the new hidden states in self._outputs."""
        m, layers, outputs = self.model, [], []
        embed_mask = None
        if m.one_hot:  # x holds the first layer's input gates (B, 3H) from the table
            gi = x + m.first.bias
            gh = hidden[0] @ m.first.weight_hh.T
            x, layer = _gru_forward(None, gi, gh, hidden[0], self.p_embed)
            layers.append(layer)
            outputs.append(x)
        else:
            embed_mask = dropout_mask(x, self.p_embed)
            if embed_mask is not None:
                x = x * embed_mask
        for cell, h in zip(self.cells, hidden[len(outputs) :], strict=True):
            gi = torch.addmm(cell.bias_ih, x, cell.weight_ih.T)
            gh = torch.addmm(cell.bias_hh, h, cell.weight_hh.T)
            x, layer = _gru_forward(x, gi, gh, h, self.p_hidden)
            layers.append(layer)
            outputs.append(x)
        self._outputs = outputs
        return x, layers, embed_mask

    def _backward_layers(self, grad_x: torch.Tensor, layers: list[_Layer]) -> torch.Tensor:
        """Gradient of the top output (B, H_last) -> gradient of the stack's input; sets the
        dense parameters' .grad on the way."""
        m = self.model
        cells = ([m.first] if m.one_hot else []) + self.cells
        for cell, layer in zip(reversed(cells), reversed(layers), strict=True):
            g_gi, g_gh, g_bi, g_bh = _gru_backward(grad_x, layer)
            if layer.x_in is None:  # one-hot table layer: the caller merges the table rows
                m.first.bias.grad = g_bi
                m.first.weight_hh.grad = g_gh.T @ layer.h_prev
                grad_x = g_gi
                continue
            cell.weight_hh.grad = g_gh.T @ layer.h_prev
            cell.bias_hh.grad = g_bh
            cell.weight_ih.grad = g_gi.T @ layer.x_in
            cell.bias_ih.grad = g_bi
            grad_x = g_gi @ cell.weight_ih
        return grad_x

    def _input_rows(self, grad_x, embed_mask, in_rows, out, grad_out, b) -> list[RowGradient]:
        """The input table's row gradients: with a shared embedding they add to the output
        rows' (nothing of its own to update), else merged per row of the input table."""
        if embed_mask is not None:
            grad_x = grad_x * embed_mask
        if in_rows is out:
            grad_out.index_add_(0, out.inverse[:b], grad_x)
            return []
        merged = grad_x.new_zeros(len(in_rows.unique), grad_x.shape[1])
        merged.index_add_(0, in_rows.inverse, grad_x)
        return [(in_rows.table, in_rows.unique, merged, None)]

    def _cross_entropy(
        self, scores: torch.Tensor, target_pos: torch.Tensor, log_q: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled softmax cross-entropy on the unique items' scores (B, U); target_pos (M,)
        maps the M target columns (B positives first) to them. -> (summed loss,
        d(loss / batch_size) / d scores (B, U), its column sums (U,), which of the U columns
        are targets (U,) bool).

        Columns of the same item have the same score and differ only in their logQ term, so
        the softmax over the M columns sums, per unique item, exp(score) times the item's
        column weight c_u = sum of exp(-log_q) over its columns: logits s + log c_u over U
        columns give the same normaliser, and the gradient comes out merged per item. The
        target stays column b alone: loss_b = log Z_b - (s_b,target - log_q_b)."""
        compiled = kernels.sampled_softmax(scores, target_pos, log_q, 1.0 / self.cfg.batch_size)
        if compiled is not None:
            return compiled
        b, n_unique = len(scores), scores.shape[1]
        rows, targets = torch.arange(b, device=scores.device), target_pos[:b]
        target_scores = scores[rows, targets]
        weight = (
            torch.ones_like(target_pos, dtype=scores.dtype) if log_q is None else (-log_q).exp()
        )
        column_weight = scores.new_zeros(n_unique).index_add_(0, target_pos, weight)
        scored = column_weight > 0
        logits = scores.add_(column_weight.log_())  # scores is ours to reuse
        top = logits.amax(dim=1, keepdim=True)
        grad = logits.sub_(top).exp_()
        total = grad.sum(dim=1, keepdim=True)
        positive = target_scores if log_q is None else target_scores - log_q[:b]
        loss = (total.log().add_(top).squeeze(1) - positive).sum()
        grad.div_(total.mul_(self.cfg.batch_size))  # softmax / batch_size ...
        grad.index_put_(
            (rows, targets), grad.new_tensor(-1.0 / self.cfg.batch_size), accumulate=True
        )
        return loss, grad, grad.sum(0), scored  # ... minus one-hot / batch_size

    def _loss_and_gradient(
        self, scores: torch.Tensor, log_q: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, d(loss / batch_size) / d scores (B, M)): cross-entropy by hand
        (graphed.StaticFusedStep scores all M columns), the others through autograd on the
        score matrix alone."""
        cfg = self.cfg
        if cfg.loss == "cross-entropy":
            logits = scores if log_q is None else scores.sub_(log_q)  # scores is ours to reuse
            logits.sub_(logits.amax(dim=1, keepdim=True))
            target_logits = logits.diagonal().clone()
            grad = logits.exp_()
            total = grad.sum(dim=1, keepdim=True)
            loss = (total.log().squeeze(1) - target_logits).sum()
            grad.div_(total.mul_(cfg.batch_size))  # softmax / batch_size ...
            grad.diagonal().sub_(1.0 / cfg.batch_size)  # ... minus one-hot / batch_size
            return loss, grad
        with torch.enable_grad():
            leaf = scores.detach().requires_grad_()
            loss = compute_loss(cfg.loss, leaf, bpreg=cfg.bpreg, elu_param=cfg.elu_param)
            (loss / cfg.batch_size).backward()
        return loss.detach(), leaf.grad


def _input_table(model: GRU4Rec) -> nn.Parameter:
    return model.first.input_gates.weight if model.one_hot else model.E.weight


def _gru_forward(x_in, gi, gh, h, p_drop) -> tuple[torch.Tensor, _Layer]:
    """torch.nn.GRUCell's equations from gi = W_i x + b_i and gh = W_h h + b_h, (B, 3H),
    then dropout. Returns the layer output and what its backward needs. gi is the caller's
    scratch: it ends up holding the gates r, z and the candidate n."""
    n_hidden = h.shape[1]
    rz = gi[:, : 2 * n_hidden].add_(gh[:, : 2 * n_hidden]).sigmoid_()
    r, z = rz[:, :n_hidden], rz[:, n_hidden:]
    hn = gh[:, 2 * n_hidden :]
    n = gi[:, 2 * n_hidden :].addcmul_(r, hn).tanh_()
    draws = dropout_draws(h, p_drop)
    compiled = kernels.gru_output(z, n, h, draws, p_drop)
    if compiled is not None:
        out, mask = compiled
    else:
        out = (1.0 - z) * n + z * h
        mask = None if draws is None else mask_from_draws(draws, p_drop)
        if mask is not None:
            out = out * mask
    return out, _Layer(x_in, h, r, z, n, hn, mask)


def _gru_backward(
    grad_out: torch.Tensor, layer: _Layer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of gi and gh (B, 3H) and of the two biases (3H,) from that of the layer's
    output; the state it read is a constant (the reference detaches it every step)."""
    r, z, n = layer.r, layer.z, layer.n
    compiled = kernels.gru_backward(grad_out, layer.mask, r, z, n, layer.hn, layer.h_prev)
    if compiled is not None:
        return compiled
    g_h = grad_out if layer.mask is None else grad_out * layer.mask
    g_an = g_h * (1.0 - z) * (1.0 - n * n)  # through the candidate's tanh
    g_ar = g_an * layer.hn * r * (1.0 - r)
    g_az = g_h * (layer.h_prev - n) * z * (1.0 - z)
    g_gi = torch.cat([g_ar, g_az, g_an], dim=1)
    g_gh = torch.cat([g_ar, g_az, g_an * r], dim=1)
    return g_gi, g_gh, g_gi.sum(0), g_gh.sum(0)


def _positions_of(index: torch.Tensor, size: int) -> torch.Tensor:
    """bool (size,): which of 0..size-1 occur in index."""
    return torch.zeros(size, dtype=torch.bool, device=index.device).index_fill_(0, index, True)
