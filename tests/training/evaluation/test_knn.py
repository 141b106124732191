"""training.evaluation.knn: STAN and VSTAN scores against a hand computation on three sessions and
against a plain loop over the papers' formulas on random sessions; session-parallel
bookkeeping against scoring each session alone."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import markov_sessions
from training.data.batching import session_parallel
from training.data.logs import DAY, Sessions
from training.data.synthetic import generate
from training.evaluation.knn import KNNParams, SequenceKNN, search_params, session_end_times

E = math.exp


def sessions(*lists: list[int]) -> Sessions:
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in lists])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    return Sessions(items, offsets, np.array([f"s{i}" for i in range(len(lists))], dtype=object))


# A = [0, 1, 2] ended a day before B = [1, 3]; C = [0, 4] ended with B.
TRAIN = sessions([0, 1, 2], [1, 3], [0, 4])
ENDS = np.array([0.0, DAY, DAY])
ALL = dict(k=10, sample_size=10, lambda_spw=1.0, lambda_snh=1.0, lambda_inh=1.0)


def test_stan_scores_equal_the_hand_computation():
    scores = SequenceKNN(TRAIN, 5, ENDS, KNNParams(**ALL)).score_session([0, 1])
    # s = [0, 1]: position weights w(0) = e^-1, w(1) = 1; |s| = sqrt(e^-2 + 1)
    norm = math.sqrt(E(-2) + 1)
    sim_a = (E(-1) + 1) / (norm * math.sqrt(3)) * E(-1)  # a day older: recency e^-1
    sim_b = 1 / (norm * math.sqrt(2))
    sim_c = E(-1) / (norm * math.sqrt(2))
    # i* (latest click of s the neighbour holds): item 1 in A (pos 2) and B (pos 1), 0 in C
    expected = [
        sim_a * E(-1) + sim_c,  # 0: one step from i* in A; i* itself in C
        sim_a + sim_b,
        sim_a * E(-1),
        sim_b * E(-1),
        sim_c * E(-1),
    ]
    assert scores == pytest.approx(expected)


def test_vstan_weighs_neighbours_by_where_s_met_them_and_items_by_idf():
    params = KNNParams(**ALL, lambda_ipw=2.0, lambda_idf=0.5)
    scores = SequenceKNN(TRAIN, 5, ENDS, params).score_session([0, 1])
    stan = SequenceKNN(TRAIN, 5, ENDS, KNNParams(**ALL)).score_session([0, 1])
    idf = [1 + 0.5 * math.log(3 / n) for n in (2, 2, 1, 1, 1)]  # sessions holding each item
    norm = math.sqrt(E(-2) + 1)
    sim_c = E(-1) / (norm * math.sqrt(2))
    # only C was reached through the older click (0 at position 1 of 2): factor e^(-1/2)
    c_part = np.array([sim_c, 0, 0, 0, sim_c * E(-1)])
    expected = (stan - c_part + c_part * E(-0.5)) * idf
    assert scores == pytest.approx(expected)


def test_only_the_k_most_similar_sessions_vote():
    scores = SequenceKNN(TRAIN, 5, ENDS, KNNParams(**{**ALL, "k": 1})).score_session([0, 1])
    assert scores[3] > 0 and scores[2] == 0 and scores[4] == 0  # B is the nearest


def loop_stan(train: Sessions, ends: np.ndarray, clicks: list[int], p: KNNParams, n_items: int):
    """The papers' formulas, one session and one item at a time."""
    assert p.lambda_spw and p.lambda_snh and p.lambda_inh  # all three weights on here
    pos_s = {item: i + 1 for i, item in enumerate(clicks)}  # last occurrence
    w = {item: E((q - len(clicks)) / p.lambda_spw) for item, q in pos_s.items()}
    norm_s = math.sqrt(sum(v * v for v in w.values()))
    n_sessions = train.n_sessions
    holding = np.zeros(n_items)
    seqs = [list(train.session(s)) for s in range(n_sessions)]
    for seq in seqs:
        for item in set(seq):
            holding[item] += 1
    sims = {}
    for s, seq in enumerate(seqs):
        shared = set(seq) & set(pos_s)
        if shared:
            recency = E(-(ends.max() - ends[s]) / DAY / p.lambda_snh)
            sims[s] = sum(w[i] for i in shared) / (norm_s * math.sqrt(len(set(seq)))) * recency
    scores = np.zeros(n_items)
    for s in sorted(sims, key=lambda s: -sims[s])[: p.k]:
        seq = seqs[s]
        last = {item: i + 1 for i, item in enumerate(seq)}
        star = max(set(seq) & set(pos_s), key=lambda i: pos_s[i])
        for item, q in last.items():
            value = sims[s] * E(-abs(q - last[star]) / p.lambda_inh)
            if p.lambda_ipw is not None:
                value *= E((pos_s[star] - len(clicks)) / p.lambda_ipw)
            if p.lambda_idf is not None:
                value *= 1 + p.lambda_idf * math.log(n_sessions / holding[item])
            scores[item] += value
    return scores


@pytest.mark.parametrize("vstan", [False, True])
def test_vectorised_scores_equal_a_plain_loop_over_the_formulas(vstan):
    train = markov_sessions(30, 120, seed=4)
    ends = np.random.default_rng(0).uniform(0, 5 * DAY, train.n_sessions)
    extra = dict(lambda_ipw=1.5, lambda_idf=2.0) if vstan else {}
    p = KNNParams(k=15, sample_size=10_000, lambda_spw=1.5, lambda_snh=2.0, lambda_inh=0.7, **extra)
    scorer = SequenceKNN(train, 30, ends, p)
    rng = np.random.default_rng(1)
    for _ in range(5):
        clicks = rng.integers(0, 30, size=int(rng.integers(1, 7))).tolist()
        assert scorer.score_session(clicks) == pytest.approx(loop_stan(train, ends, clicks, p, 30))


def test_session_parallel_scores_equal_each_session_scored_alone():
    train = markov_sessions(20, 60, seed=5)
    test = markov_sessions(20, 9, seed=6)
    scorer = SequenceKNN(train, 20, np.arange(60.0) * 3600, KNNParams(k=5, sample_size=20))
    scorer.start(3)
    got = []
    for step in session_parallel(test.items, test.offsets, 3):
        got.append(scorer.advance(step))
    expected = []
    for s in range(test.n_sessions):
        clicks = test.session(s).tolist()
        expected += [scorer.score_session(clicks[: t + 1]) for t in range(len(clicks) - 1)]
    assert sum(len(g) for g in got) == len(expected)
    # order differs between the two walks; compare as sorted sets of rows
    rows = sorted(map(tuple, torch.cat(got).numpy().round(5)))
    assert rows == sorted(map(tuple, np.asarray(expected, dtype=np.float32).round(5)))


def test_end_times_follow_the_sessions_order():
    events = pd.DataFrame({"SessionId": ["b", "a", "a"], "ItemId": ["x"] * 3, "Time": [5, 1, 9.0]})
    ordered = type("S", (), {"session_ids": np.array(["a", "b"], dtype=object)})
    assert session_end_times(events, ordered).tolist() == [9.0, 5.0]


def test_search_returns_the_best_trial_it_measured():
    events = generate(n_items=80, n_sessions=500, days=4, seed=1).events
    cut = events.Time.max() - DAY
    ends = events.groupby("SessionId").Time.transform("max")
    train, valid = events[ends <= cut], events[ends > cut]
    best, trials = search_params(train, valid, "vstan", trials=3, progress=False)
    assert len(trials) == 3
    values = [t["mrr@20"] for t in trials]
    assert trials[int(np.argmax(values))]["k"] == best.k and best.lambda_idf is not None
