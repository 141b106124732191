"""STAN and VSTAN: session-KNN with sequence and time weights, as session-parallel Scorers
for training.evaluate (the same full ranking, ties against the model, as GRU4Rec).

    times = session_end_times(train_events, train)
    stan = SequenceKNN(train, n_items, times, STAN_DEFAULTS)
    print(evaluate(stan, test))

STAN (Garg et al., SIGIR 2019), for the current session s = (s_1..s_L):
  * position weight of an item of s: w_spw(i) = exp((p(i, s) - L) / lambda_spw), p its last
    position (1-based), so the last click weighs 1;
  * similarity to a past session n: the cosine of the weighted vector of s and the binary
    vector of n, sum_{i in s & n} w_spw(i) / (sqrt(sum_{i in s} w_spw(i)^2) * sqrt(|n|)),
    times the recency of n, exp(-(t_now - t_end(n)) / lambda_snh) (lambda_snh in days);
  * candidates: the `sample_size` past sessions sharing an item with s that ended last; the
    `k` most similar are the neighbours;
  * an item i of neighbour n scores sim(s, n) * exp(-|p(i, n) - p(i*, n)| / lambda_inh), where
    i* is the most recent item of s that n holds (the paper's definition; session-rec uses the
    last position in n of any shared item instead), positions again the last occurrence.
VSTAN (Ludewig et al., 2021) multiplies each neighbour's contribution by
exp((p(i*, s) - L) / lambda_ipw) (neighbours found through older clicks count less, as in
V-SKNN) and each item's by 1 + lambda_idf * idf(i), idf(i) = log(n_sessions / sessions
holding i). A lambda of None switches its weight off.

Time: test sessions come after training, and t_now enters every neighbour's similarity as
the same factor exp(-(t_now - t_train_end) / lambda_snh) of the current step, so it changes
no ranking and no neighbour choice; the recency is taken relative to the last training click.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.logs import DAY, SESSION, TIME
from ..evaluate import SessionHistoryScorer


@dataclass(frozen=True)
class KNNParams:
    k: int = 100  # neighbours
    sample_size: int = 5000  # candidate sessions, the most recent sharing an item
    lambda_spw: float | None = 1.02  # position weight in the current session, in clicks
    lambda_snh: float | None = 5.0  # recency of the neighbour session, in days
    lambda_inh: float | None = 2.05  # distance to the shared item in the neighbour, in clicks
    lambda_ipw: float | None = None  # VSTAN: position of the shared item in the current session
    lambda_idf: float | None = None  # VSTAN: weight of the candidate item's IDF


# session-rec's defaults for STAN; VSTAN adds its two weights
STAN_DEFAULTS = KNNParams()
VSTAN_DEFAULTS = KNNParams(lambda_ipw=1.02, lambda_idf=5.0)


def session_end_times(events: pd.DataFrame, sessions: Any) -> np.ndarray:
    """(n_sessions,) float64 Unix seconds of each session's last click, in `sessions` order
    (training.data.logs.Sessions built from `events`)."""
    ends = events.groupby(SESSION)[TIME].max()
    return ends.reindex(sessions.session_ids).to_numpy(np.float64)


def _decay(distance: np.ndarray, lam: float | None) -> np.ndarray:
    """exp(-distance / lam); 1 everywhere when the weight is off (lam None)."""
    if lam is None:
        return np.ones_like(distance, dtype=np.float64)
    return np.exp(-distance / lam)


class SequenceKNN(SessionHistoryScorer):
    """STAN (lambda_ipw and lambda_idf None) or VSTAN; see the module docstring."""

    def __init__(self, train: Any, n_items: int, end_times: np.ndarray, params: KNNParams):
        items = np.asarray(train.items, dtype=np.int64)
        offsets = np.asarray(train.offsets, dtype=np.int64)
        n_sessions = len(offsets) - 1
        owner = np.repeat(np.arange(n_sessions), np.diff(offsets))
        position = np.arange(len(items)) - offsets[owner] + 1  # 1-based within the session
        # each session's distinct items with their last position, grouped by session
        frame = pd.DataFrame({"s": owner, "i": items, "p": position})
        last = frame.drop_duplicates(["s", "i"], keep="last").sort_values(["s", "p"])
        self.held_items = last["i"].to_numpy(np.int64)
        self.held_pos = last["p"].to_numpy(np.float64)
        counts = np.bincount(last["s"].to_numpy(), minlength=n_sessions)
        self.held_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_distinct = counts.astype(np.float64)
        age_days = (end_times.max() - end_times) / DAY
        self.recency = _decay(age_days, params.lambda_snh)  # (n_sessions,)
        self.idf_factor = np.ones(n_items)
        if params.lambda_idf is not None:
            holding = np.bincount(self.held_items, minlength=n_items)
            idf = np.log(n_sessions / np.maximum(holding, 1))
            self.idf_factor = 1.0 + params.lambda_idf * idf
        self.item_sessions = _recent_sessions_per_item(
            self.held_items, last["s"].to_numpy(), end_times, n_items, params.sample_size
        )
        self.end_times = end_times
        self.n_items, self.params = n_items, params
        self.history: list[list[int]] = []

    def score_session(self, clicks: list[int]) -> np.ndarray:
        """(n_items,) scores for the item after `clicks` (item indices, oldest first)."""
        p = self.params
        length = len(clicks)
        current_pos = np.zeros(self.n_items)  # last position in s, 0 = not in s
        for position, item in enumerate(clicks, 1):
            current_pos[item] = position
        in_s = np.flatnonzero(current_pos)
        w_spw = np.zeros(self.n_items)
        w_spw[in_s] = _decay(length - current_pos[in_s], p.lambda_spw)
        candidates = self._candidates(in_s)
        owner, held, _ = self._gather(candidates)
        norm = np.sqrt((w_spw[in_s] ** 2).sum()) * np.sqrt(self.n_distinct[candidates])
        sim = np.bincount(owner, weights=w_spw[held], minlength=len(candidates)) / norm
        sim *= self.recency[candidates]
        if len(candidates) > p.k:
            top = np.argpartition(-sim, p.k - 1)[: p.k]
            candidates, sim = candidates[top], sim[top]
        owner, held, pos_in_n = self._gather(candidates)
        star_pos_s, star_pos_n = _most_recent_shared(owner, current_pos[held], pos_in_n, len(sim))
        weight = sim[owner] * _decay(np.abs(pos_in_n - star_pos_n[owner]), p.lambda_inh)
        if p.lambda_ipw is not None:
            weight *= _decay(length - star_pos_s, p.lambda_ipw)[owner]
        weight *= self.idf_factor[held]
        return np.bincount(held, weights=weight, minlength=self.n_items)

    def _candidates(self, items: np.ndarray) -> np.ndarray:
        """The `sample_size` sessions holding any of `items` that ended last."""
        candidates = np.unique(np.concatenate([self.item_sessions[i] for i in items]))
        if len(candidates) > self.params.sample_size:
            ends = self.end_times[candidates]
            keep = np.argpartition(-ends, self.params.sample_size - 1)
            candidates = candidates[keep[: self.params.sample_size]]
        return candidates

    def _gather(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flattened (position in `sessions`, item, its last position in that session)."""
        starts, ends = self.held_offsets[sessions], self.held_offsets[sessions + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(sessions)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + within
        return owner, self.held_items[flat], self.held_pos[flat]


def _most_recent_shared(
    owner: np.ndarray, pos_in_s: np.ndarray, pos_in_n: np.ndarray, n_owners: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per neighbour: the position in s of i*, the latest click of s it holds, and the
    position of i* in the neighbour. pos_in_s is 0 for items not in s."""
    key = np.full(n_owners, -1.0)
    # positions in s are distinct per item, so the largest pos_in_s picks i* alone; the
    # fraction carries its position in n along (< 1 because pos_in_n < scale)
    scale = float(pos_in_n.max(initial=0.0) + 1.0)
    np.maximum.at(key, owner, np.where(pos_in_s > 0, pos_in_s + pos_in_n / scale, -1.0))
    star_s = np.floor(key)
    star_n = np.rint((key - star_s) * scale)
    return star_s, star_n


def _recent_sessions_per_item(
    items: np.ndarray, owners: np.ndarray, end_times: np.ndarray, n_items: int, size: int
) -> list[np.ndarray]:
    """For each item, the (at most `size`) sessions holding it that ended last: only those
    can be among the `size` latest sessions sharing any item with the current one."""
    ones = np.ones(len(items), dtype=np.int8)
    m = sp.csr_matrix((ones, (items, owners)), shape=(n_items, len(end_times)))
    out = []
    for i in range(n_items):
        sessions = m.indices[m.indptr[i] : m.indptr[i + 1]]  # row i: the sessions holding i
        if len(sessions) > size:
            sessions = sessions[np.argpartition(-end_times[sessions], size - 1)[:size]]
        out.append(sessions)
    return out


# What the random search draws from: the ranges of the STAN and VSTAN papers' searches,
# with longer recency horizons for logs of a few weeks.
SEARCH_GRID: dict[str, tuple[Any, ...]] = {
    "k": (50, 100, 200, 500),
    "sample_size": (500, 1000, 2500, 5000, 10000),
    "lambda_spw": (0.5, 1.02, 2.0, 4.0, 8.0),
    "lambda_snh": (1.0, 2.5, 5.0, 10.0, 25.0, 100.0),
    "lambda_inh": (0.5, 1.0, 2.05, 4.0, 8.0),
}
VSTAN_GRID: dict[str, tuple[Any, ...]] = {
    "lambda_ipw": (0.5, 1.02, 2.0, 4.0, 8.0),
    "lambda_idf": (0.5, 1.0, 2.0, 5.0, 10.0),
}


def search_params(
    train_events: pd.DataFrame,
    valid_events: pd.DataFrame,
    kind: str = "stan",
    trials: int = 12,
    metric: str = "mrr@20",
    seed: int = 0,
    progress: bool = True,
) -> tuple[KNNParams, list[dict[str, Any]]]:
    """Random search for `kind` ("stan" or "vstan"): the defaults, then `trials` - 1 draws
    from the grids, each fitted on `train_events` and scored on `valid_events` (clicks on
    items outside the training part dropped). Returns the best parameters and every trial
    ({**params, metric: value})."""
    from tqdm.auto import tqdm

    from ..data.logs import ItemVocab, Sessions
    from ..evaluate import evaluate

    if kind not in ("stan", "vstan"):
        raise ValueError(f"kind={kind!r}: use stan or vstan")
    name, _, k = metric.partition("@")
    vocab = ItemVocab.from_events(train_events)
    train = Sessions.from_events(train_events, vocab)
    valid = Sessions.from_events(valid_events, vocab, "drop", "validation")
    ends = session_end_times(train_events, train)
    grid = {**SEARCH_GRID, **(VSTAN_GRID if kind == "vstan" else {})}
    rng = np.random.default_rng(seed)
    candidates = [STAN_DEFAULTS if kind == "stan" else VSTAN_DEFAULTS]
    candidates += [
        KNNParams(**{key: values[rng.integers(len(values))] for key, values in grid.items()})
        for _ in range(trials - 1)
    ]
    done: list[dict[str, Any]] = []
    for params in tqdm(candidates, desc=f"search {kind}", disable=not progress):
        scorer = SequenceKNN(train, len(vocab), ends, params)
        value = evaluate(scorer, valid, cutoffs=(int(k),))[f"{name}@{k}"]
        done.append({**params.__dict__, metric: value})
    best = max(range(len(done)), key=lambda i: done[i][metric])
    return candidates[best], done
