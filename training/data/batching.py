"""Session-parallel mini-batches (Hidasi et al. 2016, section 3.1.1).

B sessions run side by side, one slot each. Every step feeds each slot's current click and
asks for its next one. When a session runs out, the next unused session takes the slot and
the slot's hidden state must be reset; when no sessions are left, the batch shrinks. Every
click except the last of a session is an input exactly once.

    for step in session_parallel(items, offsets, batch_size=32):
        if step.keep is not None: hidden = [h[step.keep] for h in hidden]
        if step.reset is not None: hidden = [h.masked_fill(step.reset[:, None], 0) for h in hidden]
        scores, hidden = model(step.inputs, hidden, step.targets)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Step:
    inputs: torch.Tensor  # int64 (B,), the click each slot sees now
    targets: torch.Tensor  # int64 (B,), the click that follows it
    keep: torch.Tensor | None = None  # int64 (B,): slots that go on, when the batch shrank
    reset: torch.Tensor | None = None  # bool (B,): slots that start a new session now


def session_parallel(
    items: np.ndarray | torch.Tensor,
    offsets: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
    chunk: int = 256,
) -> Iterator[Step]:
    """Yield the steps of one pass over the sessions, in the order of `offsets`.

    Sessions shorter than two clicks are skipped: they hold no example. The slots'
    bookkeeping runs in numpy for `chunk` steps at a time and their clicks are read in one
    lookup per chunk: with 32 slots a slot frees up nearly every step, and per-step tensor
    operations cost more than a training step's arithmetic. Memory is O(chunk x batch_size).
    """
    lengths = np.diff(offsets)
    order = np.flatnonzero(lengths >= 2)  # sessions in start-time order
    if len(order) == 0:
        return
    if torch.is_tensor(items):
        items_t = items.to(device=device, dtype=torch.int64)
    else:
        items_t = torch.tensor(items, dtype=torch.int64, device=device)
    next_session = min(batch_size, len(order))
    start = offsets[order[:next_session]].astype(np.int64)  # each slot's current click
    end = offsets[order[:next_session] + 1].astype(np.int64)
    fresh = np.zeros(len(start), dtype=bool)  # slots that start a new session this step
    keep: np.ndarray | None = None  # for the chunk's first step: slots that go on
    while True:
        # plan up to `chunk` steps of the same width (a shrinking batch ends the chunk)
        positions = np.empty((chunk, len(start)), dtype=np.int64)
        resets = np.zeros((chunk, len(start)), dtype=bool)
        first_keep, keep = keep, None
        n_steps, done = 0, False
        while n_steps < chunk and keep is None:
            positions[n_steps] = start
            resets[n_steps] = fresh
            n_steps += 1
            start += 1
            finished = end - start <= 1
            if not finished.any():
                fresh[:] = False
                continue
            n_new = min(int(finished.sum()), len(order) - next_session)
            refill = np.flatnonzero(finished)[:n_new]
            new_sessions = order[next_session : next_session + n_new]
            next_session += n_new
            start[refill] = offsets[new_sessions]
            end[refill] = offsets[new_sessions + 1]
            fresh = np.zeros(len(start), dtype=bool)
            fresh[refill] = True
            alive = ~finished
            alive[refill] = True
            if not alive.any():
                done = True
                break
            if not alive.all():
                keep = np.flatnonzero(alive)
                start, end, fresh = start[alive], end[alive], fresh[alive]
        yield from _chunk_steps(items_t, positions[:n_steps], resets[:n_steps], first_keep, device)
        if done:
            return


def _chunk_steps(items_t, positions, resets, first_keep, device) -> Iterator[Step]:
    """The planned steps: positions (S, B) of the inputs (each target is the next click),
    resets (S, B), and the slots kept at the first step (or None)."""
    where = torch.from_numpy(positions).to(device)
    inputs = items_t[where]
    targets = items_t[where + 1]
    any_reset = resets.any(axis=1).tolist()
    reset_t = torch.from_numpy(resets).to(device) if any(any_reset) else None
    keep = None if first_keep is None else torch.from_numpy(first_keep).to(device)
    for i in range(len(positions)):
        yield Step(inputs[i], targets[i], keep, reset_t[i] if any_reset[i] else None)
        keep = None


def first_batch_size(offsets: np.ndarray, batch_size: int) -> int:
    """How many slots the first step of `session_parallel` fills."""
    return min(batch_size, int((np.diff(offsets) >= 2).sum()))


def apply_step_to_hidden(step: Step, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shrink and reset the per-layer hidden states (B, H) as the step says."""
    if step.keep is not None:
        hidden = [h[step.keep] for h in hidden]
    if step.reset is not None:
        mask = step.reset[:, None]
        hidden = [h.masked_fill(mask, 0.0) for h in hidden]
    return hidden
