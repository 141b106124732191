"""GRU4Rec blended with a session-KNN scorer (STAN/VSTAN), the weight chosen on validation.

    blend = BlendScorer(GRUScorer(model), SequenceKNN(train, n, ends, params), weight=0.1)
    evaluate(blend, test)
    best, by_weight = choose_weight(GRUScorer(model), knn, valid, (0.0, 0.05, 0.1, 0.3))

A row's score is the model's softmax probability plus `weight` times the KNN scores divided
by the row's largest KNN score, so both parts lie in [0, 1] whatever the KNN weights' scale
(weight 0 is the model alone). Where the KNN finds no neighbour it adds nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.batching import first_batch_size, session_parallel
from ..data.logs import Sessions


def _parts(gru_scores: torch.Tensor, knn_scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    probabilities = torch.softmax(gru_scores.float().cpu(), dim=1)
    knn = knn_scores.float().cpu()
    return probabilities, knn / knn.max(dim=1, keepdim=True).values.clamp_min(1e-12)


class BlendScorer:
    """A training.evaluate Scorer: probabilities of `gru` + weight * scaled scores of `knn`."""

    def __init__(self, gru: Any, knn: Any, weight: float):
        self.gru, self.knn, self.weight = gru, knn, weight

    def start(self, batch_size: int) -> None:
        self.gru.start(batch_size)
        self.knn.start(batch_size)

    def advance(self, step: Any) -> torch.Tensor:
        probabilities, knn = _parts(self.gru.advance(step), self.knn.advance(step))
        return probabilities + self.weight * knn


def choose_weight(
    gru: Any,
    knn: Any,
    valid: Sessions,
    weights: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    metric: str = "mrr@20",
    batch_size: int = 512,
) -> tuple[float, dict[float, dict[str, float]]]:
    """Every weight's metrics on `valid` from one pass (each scorer runs once per step);
    returns the weight with the best `metric` and the metrics by weight."""
    from ..evaluate import metrics_from_ranks, rank_of_target

    name, _, k = metric.partition("@")
    ranks: dict[float, list[np.ndarray]] = {w: [] for w in weights}
    size = first_batch_size(valid.offsets, batch_size)
    gru.start(size)
    knn.start(size)
    for step in session_parallel(valid.items, valid.offsets, batch_size):
        probabilities, scaled = _parts(gru.advance(step), knn.advance(step))
        for w in weights:
            ranks[w].append(rank_of_target(probabilities + w * scaled, step.targets).numpy())
    by_weight = {w: metrics_from_ranks(np.concatenate(r), (int(k),)) for w, r in ranks.items()}
    best = max(weights, key=lambda w: by_weight[w][f"{name}@{k}"])
    return best, by_weight
