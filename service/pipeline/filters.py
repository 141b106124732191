"""Stage 5: filters. What the caller asked not to see is removed, and the list is cut to k.

The model stage asks the graph's TopK for k plus the number of excluded items, so k always
survive the exclusions; these helpers only drop and cut.
"""

from __future__ import annotations

import numpy as np


def top_k_excluding(
    items: np.ndarray, scores: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[list[int], list[float]]:
    """The first k of items (best first) not in excluded, with their scores, as lists."""
    if len(excluded) == 0:
        return items[:k].tolist(), scores[:k].tolist()
    banned = set(excluded.tolist())
    kept = [(i, s) for i, s in zip(items.tolist(), scores.tolist(), strict=True) if i not in banned]
    kept = kept[:k]
    return [i for i, _ in kept], [s for _, s in kept]


def top_k_excluding_arrays(
    items: np.ndarray, scores: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """top_k_excluding() as arrays (views when nothing is excluded): for callers that go on
    in numpy, such as the online layer's softmax over the model's candidates."""
    if len(excluded) == 0:
        return items[:k], scores[:k]
    if len(items) * len(excluded) <= 4096:  # np.isin's own setup costs ~40 us a call
        allowed = (items[:, None] != excluded[None, :]).all(axis=1)
    else:
        allowed = ~np.isin(items, excluded)
    return items[allowed][:k], scores[allowed][:k]


def order_candidates(candidates: np.ndarray, scores: np.ndarray) -> tuple[list[int], list[float]]:
    """Candidates best first; equal scores keep the request order."""
    order = np.argsort(-scores, kind="stable")
    return candidates[order].tolist(), scores[order].tolist()


def bottom_k_excluding(
    scores: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[list[int], list[float]]:
    """The k items of scores (N,) with the lowest scores, worst first, leaving out excluded
    indices, with their scores as lists. Equal scores: the lower index first, except among
    items tied at the cut, where any of them may be the one kept."""
    scores = np.asarray(scores)
    if len(excluded):
        scores = scores.astype(np.float64)  # a copy, so the caller's row is untouched
        scores[excluded] = np.inf
    n_allowed = len(scores) - len(np.unique(excluded))
    k = min(k, n_allowed)
    if k <= 0:
        return [], []
    head = np.argpartition(scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    head = head[np.lexsort((head, scores[head]))]  # by score, then by index
    return head.tolist(), scores[head].astype(np.float32).tolist()
