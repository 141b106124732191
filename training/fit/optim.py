"""Optimisers: the reference's Adagrad with momentum, row-sparse, and an Adam alternative.

Item tables get sparse gradients (only the rows of the mini-batch's items); updating just
those rows is what keeps a step cheap when there are hundreds of thousands of items.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from . import kernels


class IndexedAdagrad(Optimizer):
    """Adagrad with momentum, as in the reference GRU4Rec:

        acc += g^2;  v = momentum * v - lr * g / sqrt(acc + eps);  w += v

    For a sparse gradient only the touched rows of acc, v and w change."""

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float = 0.05, momentum: float = 0.0, eps=1e-6
    ):
        if lr <= 0 or momentum < 0 or eps <= 0:
            raise ValueError(f"invalid Adagrad settings lr={lr} momentum={momentum} eps={eps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        self._group_of = {p: group for group in self.param_groups for p in group["params"]}
        self._views: dict = {}  # numpy views of the dense parameters and state (kernels)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["acc"] = torch.zeros_like(p)
                if momentum > 0:
                    self.state[p]["mom"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            dense = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    self._sparse_update(p, self.state[p], p.grad, lr, momentum, eps)
                else:
                    dense.append(p)
            if dense:
                self._dense_update(dense, [self.state[p] for p in dense], lr, momentum, eps)

    @torch.no_grad()
    def update_rows(
        self,
        p: torch.Tensor,
        rows: torch.Tensor,
        grad: torch.Tensor,
        current: torch.Tensor | None = None,
    ) -> None:
        """Apply a row gradient directly: rows (U,) unique indices into p, grad (U, ...) their
        merged gradients (fused.FusedStep hands them over without a sparse tensor); current,
        when given, is p[rows] as read this step and lets rows repeat (see _rows_update)."""
        group = self._group_of[p]
        lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
        self._rows_update(p, self.state[p], rows, grad, lr, momentum, eps, current)

    @torch.no_grad()
    def update_output_rows(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        rows: torch.Tensor,
        grad: torch.Tensor,
        bias_grad: torch.Tensor,
        bias_mask: torch.Tensor,
    ) -> None:
        """update_rows for an output layer's weights (N, D) and bias (N, 1) at the same rows
        (U,), in one pass over memory where it can; the bias only where bias_mask (U,) bool
        is set. grad (U, D), bias_grad (U, 1)."""
        group = self._group_of[weight]
        w_state, b_state = self.state[weight], self.state[bias]
        tensors = [weight, bias, rows, grad, bias_grad, bias_mask, w_state["acc"], b_state["acc"]]
        if self._group_of[bias] is group and kernels.usable(*tensors):
            both = kernels.BiasRows(bias, b_state["acc"], b_state.get("mom"), bias_grad, bias_mask)
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            kernels.adagrad_rows(
                weight, w_state["acc"], w_state.get("mom"), rows, grad, lr, momentum, eps, both
            )
            return
        self.update_rows(bias, rows[bias_mask], bias_grad[bias_mask])
        self.update_rows(weight, rows, grad)

    @torch.no_grad()
    def update_dense(self) -> None:
        """Step every parameter whose .grad is a dense tensor, then clear those gradients."""
        for group in self.param_groups:
            dense = [p for p in group["params"] if p.grad is not None and not p.grad.is_sparse]
            if dense:
                states = [self.state[p] for p in dense]
                self._dense_update(dense, states, group["lr"], group["momentum"], group["eps"])
            for p in dense:
                p.grad = None

    @classmethod
    def _sparse_update(cls, p, state, grad, lr, momentum, eps) -> None:
        if getattr(p, "unique_grad_rows", False):  # model.gather_rows merged them already
            rows, values = grad._indices()[0], grad._values()
        else:
            grad = grad.coalesce()  # the update is non-linear in g: rows must be unique
            rows, values = grad.indices()[0], grad.values()
        cls._rows_update(p, state, rows, values, lr, momentum, eps)

    @staticmethod
    def _rows_update(p, state, rows, values, lr, momentum, eps, current=None) -> None:
        """The update on rows (U,) of p with their merged gradients values (U, ...).

        Without `current` the rows must be unique, and the accumulator and weights are
        updated by index_add_ (faster than index_copy_ on CPU). `current`, p[rows] as read
        this step, allows repeated rows (each with the same merged gradient): every write of
        a row then carries the same value (graphed.StaticFusedStep)."""
        mom = state.get("mom")
        if current is None and kernels.usable(p, state["acc"], rows, values):
            kernels.adagrad_rows(p, state["acc"], mom, rows, values, lr, momentum, eps)
            return
        # index_select / index_add_ are much faster than advanced indexing (acc[rows]) on CPU
        if current is None:
            state["acc"].index_add_(0, rows, values * values)
            acc = state["acc"].index_select(0, rows)
        else:
            acc = state["acc"].index_select(0, rows).addcmul_(values, values)
            state["acc"].index_copy_(0, rows, acc)
        denom = acc.add_(eps).sqrt_()
        if momentum > 0:
            step = state["mom"].index_select(0, rows).mul_(momentum)
            step.addcdiv_(values, denom, value=-lr)  # v = momentum * v - lr * g / sqrt(acc + eps)
            state["mom"].index_copy_(0, rows, step)
        else:
            step = values.div(denom).mul_(-lr)
        if current is None:
            p.index_add_(0, rows, step)
        else:
            p.index_copy_(0, rows, current.add_(step))

    def _dense_update(self, params, states, lr, momentum, eps) -> None:
        """All dense parameters at once: one call per operation instead of per tensor."""
        accs = [state["acc"] for state in states]
        if kernels.usable(*params, *accs, *(p.grad for p in params)):
            moms = [state["mom"] for state in states] if momentum > 0 else None
            grads = [p.grad for p in params]
            kernels.adagrad_dense(params, accs, moms, grads, lr, momentum, eps, self._views)
            return
        grads = [p.grad for p in params]
        torch._foreach_add_(accs, torch._foreach_pow(grads, 2))
        denoms = torch._foreach_add(accs, eps)
        torch._foreach_sqrt_(denoms)
        if momentum > 0:
            moms = [state["mom"] for state in states]
            torch._foreach_mul_(moms, momentum)
            torch._foreach_addcdiv_(moms, grads, denoms, value=-lr)
            torch._foreach_add_(params, moms)
        else:
            torch._foreach_addcdiv_(params, grads, denoms, value=-lr)


class SparseDenseAdam:
    """Adam for dense parameters and lazy Adam for sparse-gradient tables, as one optimiser."""

    def __init__(self, params: Iterable[nn.Parameter], sparse: set[int], lr: float):
        params = list(params)
        dense = [p for p in params if id(p) not in sparse]
        sparse_params = [p for p in params if id(p) in sparse]
        self.optimizers: list[Optimizer] = []
        if dense:
            self.optimizers.append(torch.optim.Adam(dense, lr=lr))
        if sparse_params:
            self.optimizers.append(torch.optim.SparseAdam(sparse_params, lr=lr))

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def sparse_parameter_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}


def make_optimizer(
    params: Iterable[nn.Parameter], model: nn.Module, name: str, lr: float, momentum: float
):
    if name == "adagrad":
        return IndexedAdagrad(params, lr=lr, momentum=momentum)
    if name == "adam":
        return SparseDenseAdam(params, sparse_parameter_ids(model), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use adagrad or adam")
