"""training.evaluation.blend: one-pass weight search equals evaluating each blend on its own;
weight 0 is the model alone; the KNN part is scaled to [0, 1] per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import markov_sessions
from training.data.batching import Step
from training.evaluate import evaluate
from training.evaluation.baselines import ItemKNN, MostPopular
from training.evaluation.blend import BlendScorer, choose_weight


class ScaledPopularity:
    """Most-popular with scores in [0, 1], so a softmax over them keeps every order."""

    def __init__(self, train, n_items: int):
        self.inner = MostPopular.fit(train, n_items)

    def start(self, batch_size: int) -> None:
        self.inner.start(batch_size)

    def advance(self, step):
        scores = self.inner.advance(step)
        return scores / scores.max()


def test_one_pass_search_equals_each_blend_evaluated_alone():
    train, valid = markov_sessions(25, 150, seed=7), markov_sessions(25, 30, seed=8)
    gru, knn = ScaledPopularity(train, 25), ItemKNN.fit(train, 25)
    weights = (0.0, 0.1, 1.0)
    best, by_weight = choose_weight(gru, knn, valid, weights)
    for w in weights:
        alone = evaluate(BlendScorer(gru, knn, w), valid, cutoffs=(20,))
        assert by_weight[w]["mrr@20"] == pytest.approx(alone["mrr@20"], abs=1e-12)
    assert by_weight[best]["mrr@20"] == max(m["mrr@20"] for m in by_weight.values())
    assert by_weight[0.0]["recall@20"] == pytest.approx(evaluate(gru, valid, (20,))["recall@20"])


def test_blend_is_probabilities_plus_weighted_row_scaled_knn_scores():
    class Fixed:
        def __init__(self, rows):
            self.rows = torch.tensor(rows)

        def start(self, batch_size):
            pass

        def advance(self, step):
            return self.rows

    gru, knn = Fixed([[0.0, np.log(3.0)]]), Fixed([[2.0, 4.0]])
    step = Step(torch.tensor([0]), torch.tensor([1]))
    scores = BlendScorer(gru, knn, 0.5).advance(step)
    assert scores.tolist()[0] == pytest.approx([0.25 + 0.5 * 0.5, 0.75 + 0.5 * 1.0])
