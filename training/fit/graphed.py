"""GRU4Rec's fused step with shapes that do not depend on the data, captured as one CUDA graph.

fused.FusedStep asks torch.unique which item rows a step touches; the number of rows
varies from step to step, and on a GPU the answer makes the host wait for the device.
StaticFusedStep reads one row per lookup instead (duplicates included) and merges the
duplicates' gradients through a scratch table the size of each item table (index_add, read
back, zero again): every shape is fixed by batch_size and n_sample, and repeated rows write
identical values. That makes the whole step (lookups, GRU, loss, backward, the Adagrad row
updates) capturable:

    step = GraphedStep(StaticFusedStep(model, optimizer, cfg), batch_size, n_targets)
    loss, hidden = step(inputs, targets, hidden, log_q)   # one graph replay on the GPU

The training loop uses it on CUDA for the full-size batches (config `cuda_graph`); the last,
shrinking batches of an epoch run eagerly. Costs a second copy of each item table (the
scratch). StaticFusedStep runs on any device and equals FusedStep to float32 rounding
(tests/training/fit/test_graphed.py); the graph itself is tested only where CUDA is present.
"""

from __future__ import annotations

import torch

from .fused import FusedStep, _input_table


class StaticFusedStep(FusedStep):
    """FusedStep without data-dependent shapes (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sync is not None:
            raise ValueError("StaticFusedStep does not average over ranks; use FusedStep")
        self._scratch = {id(t): torch.zeros_like(t.detach()) for t in self._row_tables}

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        hidden: list[torch.Tensor],
        log_q: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m, b = self.model, len(inputs)
        out_index = torch.cat([inputs, targets]) if m.constrained else targets
        out_rows = m.Wy.weight.detach().index_select(0, out_index)  # (B + M or M, H)
        target_rows = out_rows[b:] if m.constrained else out_rows
        if m.constrained:
            x = out_rows[:b]
        else:
            in_rows = _input_table(m).detach().index_select(0, inputs)
            x = in_rows
        bias = m.By.weight.detach().index_select(0, targets)  # (M, 1)
        x, layers, embed_mask = self._forward_layers(x, hidden)
        scores = torch.addmm(bias.T, x, target_rows.T)  # (B, M)
        loss, grad = self._loss_and_gradient(scores, log_q)
        grad_targets = grad.T @ x  # (M, H), one row per column, duplicates not yet merged
        grad_x = self._backward_layers(grad @ target_rows, layers)
        if embed_mask is not None:
            grad_x = grad_x * embed_mask
        updates = []
        if m.constrained:
            grad_out = torch.cat([grad_x, grad_targets])
        else:
            grad_out = grad_targets
            table = _input_table(m)
            updates.append((table, inputs, self._merge(table, inputs, grad_x), in_rows))
        updates.append(
            (m.By.weight, targets, self._merge(m.By.weight, targets, grad.sum(0)[:, None]), bias)
        )
        updates.append(
            (m.Wy.weight, out_index, self._merge(m.Wy.weight, out_index, grad_out), out_rows)
        )
        self._apply(updates, active=True)
        return loss, self._outputs

    def _merge(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Each lookup's gradient replaced by the sum over the lookups of its row."""
        scratch = self._scratch[id(table)]
        scratch.index_add_(0, rows, grad)
        merged = scratch.index_select(0, rows)
        scratch.index_fill_(0, rows, 0.0)
        return merged


class GraphedStep:
    """A StaticFusedStep for batches of exactly `batch_size` inputs and `n_targets` targets,
    recorded once as a CUDA graph and replayed each step (inputs copied into its buffers)."""

    def __init__(self, step: StaticFusedStep, batch_size: int, n_targets: int, with_log_q: bool):
        model = step.model
        device = model.Wy.weight.device
        if device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.inputs = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.targets = torch.arange(n_targets, dtype=torch.int64, device=device) % model.n_items
        self.hidden = model.init_hidden(batch_size, device)
        self.log_q = torch.zeros(n_targets, device=device) if with_log_q else None
        saved = _snapshot(step)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up, as torch.cuda.graphs asks
            for _ in range(3):
                step(self.inputs, self.targets, self.hidden, self.log_q)
        torch.cuda.current_stream().wait_stream(stream)
        _restore(step, saved)  # the warm-up's updates were not training
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.outputs = step(self.inputs, self.targets, self.hidden, self.log_q)

    def __call__(self, inputs, targets, hidden, log_q=None):
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        for buffer, h in zip(self.hidden, hidden, strict=True):
            buffer.copy_(h)
        if self.log_q is not None:
            self.log_q.copy_(log_q)
        self.graph.replay()
        return self.loss, self.outputs


def _snapshot(step: StaticFusedStep) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tensors = [p.data for p in step.model.parameters()]
    tensors += [t for state in step.optimizer.state.values() for t in state.values()]
    return [(t, t.clone()) for t in tensors if torch.is_tensor(t)]


def _restore(step: StaticFusedStep, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for tensor, copy in saved:
            tensor.copy_(copy)
    for p in step.model.parameters():
        p.grad = None
