"""Baselines that GRU4Rec is measured against, as session-parallel Scorers for evaluate().

    train = Sessions.from_events(train_df, vocab)
    for scorer in (MostPopular.fit(train, n), ItemKNN.fit(train, n), SessionKNN.fit(train, n)):
        print(evaluate(scorer, test))

* MostPopular: the training click counts, whatever the session did.
* ItemKNN (as in the GRU4Rec paper): items are similar when they occur in the same training
  sessions; sim(i, j) = n_ij / ((n_i + lambda)^alpha * (n_j + lambda)^(1 - alpha)), where n_ij
  counts sessions holding both and n_i sessions holding i (alpha = 0.5 is cosine; lambda damps
  rare items). The next item is scored by its similarity to the last click; only the `top_n`
  most similar items of each item are kept, so memory is n_items * top_n, not n_items^2.
* STAN and VSTAN (training.evaluation.knn): session-KNN with position, recency and
  neighbour-position weights; fit_and_evaluate and compare include them.
* SessionKNN, V-SKNN of Ludewig & Jannach (2018): the current session is a vector whose item at
  position p of L weighs p / L (linear decay: the last click 1); its similarity to a past
  session is the sum of the weights of the items they share. Candidates are the
  `sample_size` most recent past sessions sharing an item with it, the `k` most similar of those
  are the neighbours, and an item scores the summed similarity of the neighbours holding it.

Each `advance(step)` applies step.keep (slots that stay, the batch shrank), then step.reset
(slots that start a new session), consumes step.inputs (B,) and returns (B, n_items) float32
scores for the next click. Items a model knows nothing about score 0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from ..evaluate import GRUScorer, SessionHistoryScorer, evaluate


class SessionsLike(Protocol):
    """What the baselines read from training.data.logs.Sessions."""

    items: np.ndarray  # (n_events,) int64, grouped by session, time order inside
    offsets: np.ndarray  # (n_sessions + 1,) int64; sessions ordered by start time


def _session_item_matrix(train: SessionsLike, n_items: int) -> sp.csr_matrix:
    """(n_sessions, n_items) binary CSR matrix: 1 where the session holds the item."""
    items = np.asarray(train.items, dtype=np.int64)
    offsets = np.asarray(train.offsets, dtype=np.int64)
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    data = np.ones(len(items), dtype=np.float32)
    m = sp.csr_matrix((data, (rows, items)), shape=(len(offsets) - 1, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0  # a session clicking an item twice still holds it once
    return m


class MostPopular:
    """Scores every next item by its number of training clicks."""

    def __init__(self, counts: np.ndarray):
        self.scores = torch.as_tensor(np.asarray(counts, dtype=np.float32))

    @classmethod
    def fit(cls, train: SessionsLike, n_items: int) -> MostPopular:
        return cls(np.bincount(np.asarray(train.items), minlength=n_items))

    def start(self, batch_size: int) -> None:
        pass  # no state: the history of a session does not matter

    def advance(self, step: Any) -> torch.Tensor:
        # A broadcast view, not a copy: the rows are read-only and identical.
        return self.scores.expand(len(step.inputs), -1)


class ItemKNN:
    """Scores the next item by its co-occurrence similarity to the last click."""

    def __init__(self, neighbours: np.ndarray, similarity: np.ndarray, n_items: int):
        self.neighbours = torch.as_tensor(neighbours)  # (n_items, top_n) int64
        self.similarity = torch.as_tensor(similarity)  # (n_items, top_n) float32, 0 = padding
        self.n_items = n_items

    @classmethod
    def fit(
        cls,
        train: SessionsLike,
        n_items: int,
        top_n: int = 100,
        lambda_: float = 20.0,
        alpha: float = 0.5,
    ) -> ItemKNN:
        x = _session_item_matrix(train, n_items)
        co = (x.T @ x).tocsr()  # (n_items, n_items) sessions holding both
        co.setdiag(0.0)
        co.eliminate_zeros()
        support = np.asarray(x.sum(axis=0)).ravel()
        rows = np.repeat(np.arange(n_items), np.diff(co.indptr))
        sim = co.data / (
            (support[rows] + lambda_) ** alpha * (support[co.indices] + lambda_) ** (1 - alpha)
        )
        neighbours, similarity = _top_n_per_row(co.indptr, co.indices, sim, top_n)
        return cls(neighbours, similarity, n_items)

    def start(self, batch_size: int) -> None:
        pass  # only the last click matters, and it arrives with every step

    def advance(self, step: Any) -> torch.Tensor:
        last = step.inputs.long().cpu()
        scores = torch.zeros(len(last), self.n_items)
        # add, not assign: padding entries (column 0, value 0) must not overwrite column 0
        return scores.scatter_add_(1, self.neighbours[last], self.similarity[last])


def _top_n_per_row(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The n largest entries of each CSR row as dense (rows, n) (column, value) arrays,
    padded with column 0 and value 0 (a zero adds nothing to a scatter of scores)."""
    n_rows = len(indptr) - 1
    lengths = np.diff(indptr)
    row_of = np.repeat(np.arange(n_rows), lengths)
    # Sort by row, then by value descending; the first n of each row are its top n.
    order = np.lexsort((-values, row_of))
    rank = np.arange(len(order)) - indptr[row_of[order]]
    keep = order[rank < n]
    cols = np.zeros((n_rows, n), dtype=np.int64)
    vals = np.zeros((n_rows, n), dtype=np.float32)
    kept_rows = row_of[keep]
    kept_rank = rank[rank < n]
    cols[kept_rows, kept_rank] = indices[keep]
    vals[kept_rows, kept_rank] = values[keep]
    return cols, vals


class SessionKNN(SessionHistoryScorer):
    """V-SKNN: scores items by the sessions most similar to the current one (see module doc)."""

    def __init__(self, train: SessionsLike, n_items: int, k: int = 100, sample_size: int = 500):
        x = _session_item_matrix(train, n_items)  # CSR: row s = the distinct items of session s
        self.session_offsets, self.session_items = x.indptr.astype(np.int64), x.indices
        xt = x.T.tocsr()  # row i = sessions holding item i, ascending = oldest first
        xt.sort_indices()
        # Only each item's `sample_size` most recent sessions can be among the `sample_size`
        # most recent sessions sharing any item with the current session, so keep just those.
        self.item_sessions = [
            xt.indices[max(xt.indptr[i], xt.indptr[i + 1] - sample_size) : xt.indptr[i + 1]]
            for i in range(n_items)
        ]
        self.n_items, self.k, self.sample_size = n_items, k, sample_size
        self.history: list[list[int]] = []

    @classmethod
    def fit(
        cls, train: SessionsLike, n_items: int, k: int = 100, sample_size: int = 500
    ) -> SessionKNN:
        return cls(train, n_items, k=k, sample_size=sample_size)

    def score_session(self, clicks: list[int]) -> np.ndarray:
        """(n_items,) scores for the item after `clicks` (item indices, oldest first)."""
        weight = _linear_decay(clicks)  # {item: weight}
        items = np.fromiter(weight, dtype=np.int64)
        candidates = np.unique(np.concatenate([self.item_sessions[i] for i in items]))
        candidates = candidates[-self.sample_size :]  # the most recent
        dense = np.zeros(self.n_items, dtype=np.float64)
        dense[items] = np.fromiter(weight.values(), dtype=np.float64)
        owner, held = self._gather(candidates)
        sim = np.bincount(owner, weights=dense[held], minlength=len(candidates))
        if len(candidates) > self.k:
            top = np.argpartition(-sim, self.k - 1)[: self.k]
            candidates, sim = candidates[top], sim[top]
        owner, held = self._gather(candidates)
        return np.bincount(held, weights=sim[owner], minlength=self.n_items)

    def _gather(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flattened (position in `sessions`, item) pairs of the given training sessions."""
        starts, ends = self.session_offsets[sessions], self.session_offsets[sessions + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(sessions)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, self.session_items[np.repeat(starts, lengths) + within]


def _linear_decay(clicks: list[int]) -> dict[int, float]:
    """Position weights p / L of the session's items (p = 1..L, the last click 1); an item
    clicked more than once keeps the weight of its latest click."""
    n = len(clicks)
    return {item: (p + 1) / n for p, item in enumerate(clicks)}


def fit_and_evaluate(
    train: Any,
    test: Any,
    n_items: int,
    cutoffs=(1, 5, 10, 20),
    gru_config: Any = None,
    end_times: np.ndarray | None = None,
    knn_params: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics of each baseline (and of GRU4Rec trained with `gru_config`, a training Config,
    when given) on the same test Sessions, each with its "train_seconds" and "n_events". With
    the training sessions' `end_times` (training.evaluation.knn.session_end_times), STAN and
    VSTAN too, with `knn_params` {"stan": KNNParams, "vstan": KNNParams} or session-rec's
    defaults. progress: a bar per evaluation."""

    makers: dict[str, Any] = {
        "most-popular": lambda: MostPopular.fit(train, n_items),
        "item-knn": lambda: ItemKNN.fit(train, n_items),
        "v-sknn": lambda: SessionKNN.fit(train, n_items),
    }
    if end_times is not None:
        from .knn import STAN_DEFAULTS, VSTAN_DEFAULTS, SequenceKNN

        chosen = {"stan": STAN_DEFAULTS, "vstan": VSTAN_DEFAULTS, **(knn_params or {})}
        for name, params in chosen.items():
            makers[name] = lambda p=params: SequenceKNN(train, n_items, end_times, p)
    if gru_config is not None:
        from ..fit.train import fit

        makers["gru4rec"] = lambda: GRUScorer(fit(train, n_items, gru_config, progress=False)[0])
    results = {}
    for name, make in makers.items():
        started = time.perf_counter()
        scorer = make()
        seconds = time.perf_counter() - started
        scores = evaluate(scorer, test, cutoffs, progress=progress)
        results[name] = {**scores, "train_seconds": seconds}
    return results


def results_table(results: dict[str, dict[str, float]], cutoffs=(20,)) -> str:
    """Markdown: one row per model, Recall/MRR/NDCG at each cutoff and training seconds."""
    names = (("recall", "Recall"), ("mrr", "MRR"), ("ndcg", "NDCG"))
    columns = [(f"{m}@{k}", f"{label}@{k}") for k in cutoffs for m, label in names]
    lines = [
        "| model | " + " | ".join(label for _, label in columns) + " | train s |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for name, r in results.items():
        values = " | ".join(f"{r[key]:.4f}" for key, _ in columns)
        lines.append(f"| {name} | {values} | {r['train_seconds']:.1f} |")
    return "\n".join(lines)


def compare(
    train_path: str,
    test_path: str,
    cutoffs=(1, 5, 10, 20),
    gru_config: Any = None,
    tune_trials: int = 0,
    valid_days: float = 1.0,
    columns: tuple[str, ...] = (),
) -> str:
    """compare_results as text: the tuned STAN/VSTAN settings (knn_json) when tuned, then
    the markdown table."""
    results, tuned = compare_results(
        train_path, test_path, cutoffs, gru_config, tune_trials, valid_days, columns
    )
    notes = [knn_json(tuned)] if tuned else []
    return "\n".join([*notes, results_table(results, tuple(cutoffs))])


def compare_results(
    train_path: str,
    test_path: str,
    cutoffs=(1, 5, 10, 20),
    gru_config: Any = None,
    tune_trials: int = 0,
    valid_days: float = 1.0,
    columns: tuple[str, ...] = (),
    progress: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """`python -m training baselines`: read train/test click logs (as written by
    `python -m training split`), fit the baselines on train, and return their metrics on
    test (test clicks on unknown items dropped; fit_and_evaluate's) and the STAN/VSTAN
    settings tuned ({} without `tune_trials`). With `tune_trials`, STAN and VSTAN are first
    tuned on the last `valid_days` of train (training.evaluation.knn.search_params).
    columns: read_events' column names (session, item, time, user), when not the defaults."""
    from ..data.logs import ItemVocab, Sessions, read_events
    from .knn import search_params, session_end_times
    from .tune import validation_split

    train_events = read_events(train_path, *columns)
    vocab = ItemVocab.from_events(train_events)
    train = Sessions.from_events(train_events, vocab, source=str(train_path))
    test = Sessions.from_events(read_events(test_path, *columns), vocab, "drop", str(test_path))
    knn_params = {}
    if tune_trials > 0:
        fit_part, valid_part = validation_split(train_events, valid_days)
        for kind in ("stan", "vstan"):
            knn_params[kind], _ = search_params(
                fit_part, valid_part, kind, tune_trials, progress=progress
            )
    ends = session_end_times(train_events, train)
    results = fit_and_evaluate(
        train, test, len(vocab), tuple(cutoffs), gru_config, ends, knn_params, progress
    )
    return results, knn_params


def knn_json(params: dict[str, Any]) -> str:
    """{"stan": KNNParams, ...} as the JSON that `report --knn-params FILE` reads."""
    return json.dumps({kind: dataclasses.asdict(p) for kind, p in params.items()})
