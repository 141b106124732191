"""The filters against their definitions: the first k items not excluded, best first."""

import numpy as np
import pytest

from service.pipeline.filters import top_k_excluding, top_k_excluding_arrays


@pytest.mark.parametrize("n_excluded", [0, 3, 50, 200])  # 200 x 60 takes np.isin's path
def test_top_k_excluding_arrays_keeps_the_first_k_allowed_in_order(n_excluded):
    rng = np.random.default_rng(n_excluded)
    items = rng.permutation(1000)[:60]
    scores = np.sort(rng.normal(size=60))[::-1].astype(np.float32)
    excluded = rng.choice(items, min(n_excluded, 40), replace=False)
    excluded = np.concatenate([excluded, 1000 + np.arange(n_excluded - len(excluded))])
    top, top_scores = top_k_excluding_arrays(items, scores, excluded, 20)
    expected = [i for i in items.tolist() if i not in set(excluded.tolist())][:20]
    assert top.tolist() == expected
    assert top_scores.tolist() == scores[[items.tolist().index(i) for i in expected]].tolist()
    assert (top.tolist(), top_scores.tolist()) == top_k_excluding(items, scores, excluded, 20)
