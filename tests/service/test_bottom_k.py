"""RecommendRequest.bottom_k: the least likely next items, checked against PyTorch's scores
and the training-set popularity over a real gRPC connection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.pipeline.filters import bottom_k_excluding


def worst(scores: np.ndarray, k: int, banned: set[int] = frozenset()) -> list[int]:
    """The reference: indices sorted by (score, index), banned left out."""
    order = sorted((float(s), i) for i, s in enumerate(scores) if i not in banned)
    return [i for _, i in order[:k]]


def test_bottom_items_are_the_lowest_model_scores_worst_first(served_model_only, tiny):
    clicks = ["item-003", "item-017", "item-041"]
    response = served_model_only.client.recommend("s1", clicks, top_k=5, bottom_k=7)
    expected = tiny.scores_after(clicks)
    got = [it.item_id for it in response.bottom_items]
    assert got == [tiny.item_ids[i] for i in worst(expected, 7)]
    scores = [it.score for it in response.bottom_items]
    assert scores == sorted(scores)
    np.testing.assert_allclose(scores, np.sort(expected)[:7], rtol=1e-4, atol=1e-5)
    assert {it.source for it in response.bottom_items} == {1}  # SOURCE_MODEL
    # the top items are unchanged by asking for the bottom ones (the same answer twice: the
    # online layer, which learns from each call, is off)
    plain = served_model_only.client.recommend("s2", clicks, top_k=5)
    assert [it.item_id for it in response.items] == [it.item_id for it in plain.items]


def test_bottom_items_leave_out_excluded_and_clicked_items(served, tiny):
    clicks = ["item-010", "item-020"]
    scores = tiny.scores_after(clicks)
    lowest = worst(scores, 3)
    exclude = [tiny.item_ids[lowest[0]]]
    response = served.client.recommend(
        "", clicks, top_k=3, bottom_k=5, exclude_items=exclude, exclude_clicked=True
    )
    banned = {lowest[0], tiny.index("item-010"), tiny.index("item-020")}
    assert [it.item_id for it in response.bottom_items] == [
        tiny.item_ids[i] for i in worst(scores, 5, banned)
    ]


def test_without_known_clicks_the_bottom_is_the_least_popular(served, tiny):
    response = served.client.recommend("", ["no-such-item"], top_k=3, bottom_k=4)
    # the bottom from training popularity, whatever answers the top (with the online layer
    # on, its ranking of the clicks it learnt)
    assert {it.source for it in response.bottom_items} == {2}  # SOURCE_POPULARITY
    assert [it.item_id for it in response.bottom_items] == [
        tiny.item_ids[i] for i in worst(tiny.popularity, 4)
    ]
    assert [it.score for it in response.bottom_items] == sorted(tiny.popularity.astype(float))[:4]


def test_bottom_k_zero_returns_no_bottom_items(served):
    assert len(served.client.recommend("", ["item-001"], top_k=3).bottom_items) == 0


def test_bottom_k_out_of_range_is_invalid_argument(served):
    with pytest.raises(grpc.RpcError) as err:
        served.client.recommend("", ["item-001"], bottom_k=5000)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "bottom_k=5000" in err.value.details()


def test_bottom_items_with_the_online_blend_are_the_models_logits(served, tiny):
    client = served.client  # the shipped configuration: the online layer is on
    clicks = ["item-005", "item-006"]
    response = client.recommend("s", clicks, top_k=5, bottom_k=3)
    assert [it.item_id for it in response.bottom_items] == [
        tiny.item_ids[i] for i in worst(tiny.scores_after(clicks), 3)
    ]


def test_bottom_k_excluding_breaks_ties_by_index_and_stops_at_the_allowed_items():
    scores = np.array([3.0, 1.0, 1.0, 0.5, 2.0], dtype=np.float32)
    assert bottom_k_excluding(scores, np.array([], dtype=np.int64), 3) == (
        [3, 1, 2],
        [0.5, 1.0, 1.0],
    )
    assert bottom_k_excluding(scores, np.array([3, 3, 1]), 10) == ([2, 4, 0], [1.0, 2.0, 3.0])
    assert scores[3] == 0.5  # the caller's row is not modified
