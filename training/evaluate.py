"""Next-item evaluation: every test click but a session's last predicts the next one,
ranked against *all* items (no sampled negatives), Recall/MRR/NDCG@k.

Ties with the target count against the model by default ("conservative": rank = number of
items scoring at least as high as the target), so a model that scores everything equal gets
no credit. The hidden state starts from zero for each test session.

    python -m training evaluate --model runs/demo --test data/demo/test.tsv --cutoffs 5 20
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data.batching import Step, apply_step_to_hidden, first_batch_size, session_parallel
from .data.logs import Sessions

TIE_MODES = ("conservative", "standard", "median")


class Scorer(Protocol):
    """What the evaluation drives, session-parallel like training."""

    def start(self, batch_size: int) -> None: ...

    def advance(self, step: Step) -> torch.Tensor:
        """Apply step.keep/step.reset, read step.inputs; scores (B, n_items) for the next click."""
        ...


class GRUScorer:
    """Any model with init_hidden() and forward(inputs, hidden, None) -> (scores, hidden)."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.hidden: list[torch.Tensor] = []

    def start(self, batch_size: int) -> None:
        self.hidden = self.model.init_hidden(batch_size, self.device)

    @torch.no_grad()
    def advance(self, step: Step) -> torch.Tensor:
        self.hidden = apply_step_to_hidden(step, self.hidden)
        scores, self.hidden = self.model(step.inputs.to(self.device), self.hidden, None)
        return scores


def rank_of_target(scores: torch.Tensor, targets: torch.Tensor, mode: str = "conservative"):
    """1-based rank of each row's target among all columns. scores (B, N), targets (B,).
    A NaN target score ranks last (N): no comparison holds for it, so it was rank 0 before,
    a hit with a reciprocal rank of infinity."""
    target_scores = scores.gather(1, targets[:, None])
    # summing in int32 is several times faster than the default int64 bool reduction
    higher = (scores > target_scores).sum(dim=1, dtype=torch.int32)
    if mode == "standard":  # ties go in the model's favour
        rank = higher + 1
    elif mode in ("conservative", "median"):
        ties = (scores == target_scores).sum(dim=1, dtype=torch.int32)  # counts the target too
        rank = higher + ties if mode == "conservative" else higher + (ties + 1).float() / 2
    else:
        raise ValueError(f"unknown tie mode {mode!r}; use one of {', '.join(TIE_MODES)}")
    return torch.where(target_scores[:, 0].isnan(), scores.shape[1], rank)


def metrics_from_ranks(ranks: np.ndarray, cutoffs=(1, 5, 10, 20)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean()) if len(ranks) else 0.0
        ndcg = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
        out[f"ndcg@{k}"] = float(ndcg.mean()) if len(ranks) else 0.0
    return out


def collect_ranks(
    scorer: Scorer,
    test: Sessions,
    batch_size: int = 512,
    mode: str = "conservative",
    progress: bool = False,
    desc: str = "evaluate",
) -> np.ndarray:
    """Ranks of every test target, in the order the session-parallel pass meets them;
    desc: the progress bar's label."""
    ranks = []
    scorer.start(first_batch_size(test.offsets, batch_size))
    n_events = int(np.sum(np.maximum(np.diff(test.offsets) - 1, 0)))
    with tqdm(total=n_events, desc=desc, unit="ev", disable=not progress) as bar:
        for step in session_parallel(test.items, test.offsets, batch_size):
            scores = scorer.advance(step)
            targets = step.targets.to(scores.device)
            ranks.append(rank_of_target(scores, targets, mode).cpu().numpy())
            bar.update(len(targets))
    return np.concatenate(ranks) if ranks else np.zeros(0)


def evaluate(
    scorer: Scorer,
    test: Sessions,
    cutoffs=(1, 5, 10, 20),
    batch_size: int = 512,
    mode: str = "conservative",
    progress: bool = False,
) -> dict[str, float]:
    """{"recall@20": ..., "mrr@20": ..., "ndcg@20": ..., "n_events": ...} over `test`."""
    ranks = collect_ranks(scorer, test, batch_size, mode, progress)
    return {**metrics_from_ranks(ranks, cutoffs), "n_events": int(len(ranks))}


def format_table(results: dict[str, dict[str, float]], cutoffs=(1, 5, 10, 20)) -> str:
    """A markdown table: one row per model, Recall/MRR/NDCG at each cutoff."""
    columns = [f"{m}@{k}" for k in cutoffs for m in ("recall", "mrr", "ndcg")]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{res[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


class SessionHistoryScorer:
    """Evaluation's scorer protocol for models that score a session from its clicks so far:
    keeps each batch slot's clicks through evaluate's session-parallel steps and asks
    score_session(clicks) -> (n_items,) scores for each."""

    n_items: int
    history: list[list[int]]

    def score_session(self, clicks: list[int]) -> np.ndarray:
        raise NotImplementedError

    def start(self, batch_size: int) -> None:
        self.history = [[] for _ in range(batch_size)]

    def advance(self, step: Step) -> torch.Tensor:
        if step.keep is not None:
            self.history = [self.history[i] for i in step.keep.tolist()]
        if step.reset is not None:
            for i in torch.nonzero(step.reset).flatten().tolist():
                self.history[i] = []
        scores = np.zeros((len(step.inputs), self.n_items), dtype=np.float32)
        for i, item in enumerate(step.inputs.tolist()):
            self.history[i].append(item)
            scores[i] = self.score_session(self.history[i])
        return torch.from_numpy(scores)
