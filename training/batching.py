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
) -> Iterator[Step]:
    """Yield the steps of one pass over the sessions, in the order of `offsets`.

    Sessions shorter than two clicks are skipped: they hold no example.
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
    slots = order[:next_session]
    start = offsets[slots].astype(np.int64)  # position of each slot's current click
    end = offsets[slots + 1].astype(np.int64)
    keep: torch.Tensor | None = None
    reset: torch.Tensor | None = None
    while True:
        run = int((end - start).min()) - 1  # steps until the first slot runs out
        # the clicks of the whole run in one lookup, (run + 1, B); a step reads two rows
        positions = (
            torch.as_tensor(start, device=device) + torch.arange(run + 1, device=device)[:, None]
        )
        block = items_t[positions]
        for i in range(run):
            yield Step(block[i], block[i + 1], keep, reset)
            keep = reset = None
        start = start + run
        finished = end - start <= 1
        n_new = min(int(finished.sum()), len(order) - next_session)
        refill = np.flatnonzero(finished)[:n_new]
        new_sessions = order[next_session : next_session + n_new]
        next_session += n_new
        start[refill] = offsets[new_sessions]
        end[refill] = offsets[new_sessions + 1]
        alive = ~finished
        alive[refill] = True
        if not alive.any():
            return
        fresh = np.zeros(len(start), dtype=bool)
        fresh[refill] = True
        if not alive.all():
            keep = torch.as_tensor(np.flatnonzero(alive), device=device)
            start, end, fresh = start[alive], end[alive], fresh[alive]
        reset = torch.as_tensor(fresh, device=device) if fresh.any() else None


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
