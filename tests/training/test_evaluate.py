"""Ranking metrics on hand-made rankings, with ties counted against the model."""

import math

import numpy as np
import pytest
import torch

from training.config import Config
from training.data.logs import Sessions
from training.evaluate import GRUScorer, collect_ranks, metrics_from_ranks, rank_of_target
from training.models.gru4rec import GRU4Rec


def test_rank_counts_ties_against_the_model_by_default():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    targets = torch.tensor([1, 3])
    assert rank_of_target(scores, targets).tolist() == [3, 4]
    assert rank_of_target(scores, targets, "standard").tolist() == [2, 1]
    assert rank_of_target(scores, targets, "median").tolist() == [2.5, 2.5]


def test_metrics_match_hand_computed_values():
    ranks = np.array([1, 3, 25, 2])
    m = metrics_from_ranks(ranks, cutoffs=(1, 5, 20))
    assert m["recall@1"] == 0.25
    assert m["recall@5"] == 0.75 and m["recall@20"] == 0.75
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 4)


def test_a_model_that_scores_everything_equal_gets_no_credit():
    class Constant:
        def start(self, batch_size):
            pass

        def advance(self, step):
            return torch.zeros(len(step.inputs), 50)

    test = Sessions(np.arange(20) % 50, np.array([0, 5, 12, 20]), np.array(["a", "b", "c"]))
    ranks = collect_ranks(Constant(), test)
    assert (ranks == 50).all() and len(ranks) == 20 - 3
    assert metrics_from_ranks(ranks, (20,))["recall@20"] == 0.0


def test_batched_evaluation_equals_one_session_at_a_time():
    """The state starts from zero for each test session, whatever slot it lands in."""
    model = GRU4Rec(30, Config(layers=(8, 8), constrained_embedding=False, embedding=4)).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 7, size=9)
    test = Sessions(
        rng.integers(0, 30, size=lengths.sum()),
        np.concatenate([[0], np.cumsum(lengths)]),
        np.arange(9).astype(str),
    )
    batched = collect_ranks(GRUScorer(model), test, batch_size=4)
    single = []
    for s in range(9):
        one = Sessions(test.session(s), np.array([0, lengths[s]]), np.array(["x"]))
        single.append(collect_ranks(GRUScorer(model), one, batch_size=1))
    assert sorted(batched.tolist()) == sorted(np.concatenate(single).tolist())


def test_a_nan_target_score_ranks_last_not_first():
    scores = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 3.0, 1.0]])
    targets = torch.tensor([2, 0])
    for mode, second in (("conservative", 2), ("standard", 1), ("median", 1.5)):
        ranks = rank_of_target(scores, targets, mode)
        assert ranks.tolist() == [3, second]
