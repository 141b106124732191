"""Training on several processes, GPUs or machines with torch.distributed, launched by torchrun.

    torchrun --nproc-per-node 2 -m training train --train data/demo/train.tsv --out runs/ddp
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host:29400 \\
        -m training train ...                                   (docs/distributed.md: Kubernetes)

What DistributedDataParallel does, done by hand so that the row-sparse item tables work:
- every rank builds the same model from the same seed (and rank 0's weights are broadcast);
- the sessions are dealt out round-robin, so each rank runs session-parallel mini-batches
  over its own share, with its own negative samples;
- after each step's backward the dense gradients are all-reduced and averaged, and each item
  table's touched rows are all-gathered, merged per row and averaged: every rank then applies
  the same update to the same rows, so the ranks' parameters stay identical. (DDP's own
  sparse path needs a backend with sparse all-reduce, which NCCL lacks, and would undo the
  rows' merge the optimiser relies on.)
- ranks with fewer steps keep joining the collectives with empty gradients until every rank
  is done, so no rank waits forever;
- rank 0 writes the model file.

Backend: nccl when each rank has a CUDA device, else gloo (CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..data.logs import Sessions


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun (and the Kubeflow PyTorchJob) set WORLD_SIZE and RANK in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device_type: str = "cpu") -> Rank:
    """Join the process group torchrun describes (env:// rendezvous: MASTER_ADDR/PORT,
    RANK, WORLD_SIZE, LOCAL_RANK); nccl for CUDA, gloo for the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Rank(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> Rank | None:
    """This process's rank when a process group of more than one is running, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard_sessions(sessions: Sessions, rank: int, world_size: int) -> Sessions:
    """Every world_size-th session from `rank` on, in their original (time) order."""
    lengths = np.diff(sessions.offsets)
    mine = np.arange(rank, len(lengths), world_size)
    starts = sessions.offsets[mine]
    mine_lengths = lengths[mine]
    offsets = np.concatenate([[0], np.cumsum(mine_lengths)]).astype(np.int64)
    # positions of the kept clicks, session by session
    positions = np.repeat(starts - offsets[:-1], mine_lengths) + np.arange(offsets[-1])
    ids = np.asarray(sessions.session_ids)[mine]
    return Sessions(np.asarray(sessions.items)[positions], offsets, ids)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's weights and buffers everywhere (they agree already when seeds do)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


RowGradient = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
# (table parameter, unique rows (U,), their gradients (U, D), the rows' current values or None)


class GradientSync:
    """Averages one step's gradients over the ranks; see the module docstring."""

    def __init__(self, rank: Rank):
        self.rank = rank

    def dense(self, grads: list[torch.Tensor], active: bool) -> tuple[list[torch.Tensor], bool]:
        """All-reduce the dense gradients (averaged) in one flat buffer; with them, whether
        any rank had a real step (active)."""
        flags = torch.tensor([1.0 if active else 0.0], device=self._device(grads))
        flat = torch.cat([g.reshape(-1) for g in grads] + [flags])
        dist.all_reduce(flat)
        any_active = bool(flat[-1] > 0)
        flat = flat[:-1].div_(self.rank.world_size)
        return list(flat.split([g.numel() for g in grads])), any_active

    def rows(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> RowGradient:
        """All-gather each rank's touched rows and their gradients; merge them per row and
        average. The same result, in the same order, on every rank."""
        world = self.rank.world_size
        size = torch.tensor([len(rows)], device=rows.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded_rows = rows.new_zeros(longest)
        padded_rows[: len(rows)] = rows
        padded_grad = grad.new_zeros((longest, *grad.shape[1:]))
        padded_grad[: len(rows)] = grad
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_grads = [torch.empty_like(padded_grad) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_grads, padded_grad)
        counts = [int(s.item()) for s in sizes]
        rows_cat = torch.cat([r[:n] for r, n in zip(all_rows, counts, strict=True)])
        grads_cat = torch.cat([g[:n] for g, n in zip(all_grads, counts, strict=True)])
        merged_rows, inverse = torch.unique(rows_cat, return_inverse=True)
        merged = grads_cat.new_zeros((len(merged_rows), *grads_cat.shape[1:]))
        merged.index_add_(0, inverse, grads_cat).div_(world)
        return table, merged_rows, merged, None

    def autograd_gradients(self, params: list[torch.nn.Parameter], active: bool) -> bool:
        """Average the .grad of `params` in place: dense ones all-reduced, sparse (row) ones
        merged as in rows(). Parameters without a gradient on this rank send zeros (and empty
        rows) and get the average. Returns whether any rank had a real step."""
        dense = [p for p in params if not _is_sparse_table(p)]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        averaged, any_active = self.dense(grads, active)
        for p, g in zip(dense, averaged, strict=True):
            p.grad = g.view_as(p)
        for p in params:
            if not _is_sparse_table(p):
                continue
            if p.grad is None:
                rows = torch.zeros(0, dtype=torch.int64, device=p.device)
                values = p.new_zeros((0, *p.shape[1:]))
            else:
                grad = p.grad if getattr(p, "unique_grad_rows", False) else p.grad.coalesce()
                rows, values = grad._indices()[0], grad._values()
            _, rows, values, _ = self.rows(p, rows, values)
            p.grad = torch.sparse_coo_tensor(
                rows[None], values, p.shape, is_coalesced=True, check_invariants=False
            )
            p.unique_grad_rows = True  # type: ignore[attr-defined]
        return any_active

    @staticmethod
    def _device(grads: list[torch.Tensor]) -> torch.device:
        return grads[0].device if grads else torch.device("cpu")


def _is_sparse_table(p: torch.nn.Parameter) -> bool:
    """Item tables (nn.Embedding(sparse=True) weights) are marked by the model."""
    return bool(getattr(p, "row_sparse", False))


def mark_sparse_tables(model: torch.nn.Module) -> None:
    """Mark the weights of sparse-gradient embeddings, whose gradients are merged by rows."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.sparse:
            module.weight.row_sparse = True  # type: ignore[attr-defined]


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum over the ranks (epoch loss and event counts)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
