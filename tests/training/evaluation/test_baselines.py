"""training.evaluation.baselines: scores on hand-made sessions against figures worked out by
hand, and the session-parallel bookkeeping (shrinking batches, resets) against a
session-by-session replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.batching import Step
from training.data.logs import ItemVocab, Sessions
from training.data.synthetic import generate
from training.evaluate import evaluate, metrics_from_ranks
from training.evaluation.baselines import (
    ItemKNN,
    MostPopular,
    SessionKNN,
    fit_and_evaluate,
    results_table,
)


def sessions(*lists: list[int]) -> Sessions:
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in lists])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    return Sessions(items, offsets, np.array([f"s{i}" for i in range(len(lists))], dtype=object))


def step(inputs, keep=None, reset=None) -> Step:
    return Step(
        inputs=torch.tensor(inputs),
        targets=torch.zeros(len(inputs), dtype=torch.int64),  # not read by scorers
        keep=None if keep is None else torch.tensor(keep),
        reset=None if reset is None else torch.tensor(reset),
    )


def test_most_popular_scores_every_slot_by_training_clicks():
    scorer = MostPopular.fit(sessions([0, 1], [1, 2, 1], [3, 1]), n_items=5)
    scorer.start(2)
    scores = scorer.advance(step([0, 4]))
    expected = torch.tensor([1.0, 4.0, 1.0, 1.0, 0.0])
    assert torch.equal(scores, expected.expand(2, -1))


# Sessions A..D; item 2 is clicked twice in D, which must count once.
KNN_TRAIN = ([0, 1, 2], [0, 1], [1, 3], [2, 2, 0])
# sessions holding each item: 0: A B D, 1: A B C, 2: A D, 3: C
SUPPORT = {0: 3, 1: 3, 2: 2, 3: 1}
# sessions holding both: (0,1): A B, (0,2): A D, (1,2): A, (1,3): C
COOCCUR = {(0, 1): 2, (0, 2): 2, (1, 2): 1, (1, 3): 1}


def hand_similarity(i: int, j: int, lam: float, alpha: float) -> float:
    n_ij = COOCCUR.get((min(i, j), max(i, j)), 0)
    return n_ij / ((SUPPORT[i] + lam) ** alpha * (SUPPORT[j] + lam) ** (1 - alpha))


@pytest.mark.parametrize("lam,alpha", [(0.0, 0.5), (20.0, 0.5), (5.0, 0.75)])
def test_item_knn_scores_are_the_regularised_cooccurrence_with_the_last_click(lam, alpha):
    scorer = ItemKNN.fit(sessions(*KNN_TRAIN), n_items=4, lambda_=lam, alpha=alpha)
    scorer.start(4)
    scores = scorer.advance(step([0, 1, 2, 3]))
    expected = [
        [0.0 if i == j else hand_similarity(i, j, lam, alpha) for j in range(4)] for i in range(4)
    ]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_item_knn_keeps_only_the_top_n_neighbours():
    # from item 1: 0 (two sessions) beats 2 and 3 (one each, 3 less supported) at lambda 0
    scorer = ItemKNN.fit(sessions(*KNN_TRAIN), n_items=4, top_n=1, lambda_=0.0)
    scorer.start(1)
    scores = scorer.advance(step([1]))
    torch.testing.assert_close(scores, torch.tensor([[2 / 3, 0.0, 0.0, 0.0]]))


# Past sessions, oldest first. A current session [x, y] weighs x 1/2 and y 1.
SKNN_TRAIN = ([0, 1], [1, 2], [2, 3], [0, 3])


def test_session_knn_weighs_recent_clicks_more():
    scorer = SessionKNN.fit(sessions(*SKNN_TRAIN), n_items=4, k=4)
    # [0, 2]: sims S0 = 1/2 (has 0), S1 = 1 (has 2), S2 = 1, S3 = 1/2
    # item scores = sum of sims of the sessions holding it
    np.testing.assert_allclose(scorer.score_session([0, 2]), [1.0, 1.5, 2.0, 1.5])
    # [2, 0]: sims S0 = 1, S1 = 1/2, S2 = 1/2, S3 = 1
    np.testing.assert_allclose(scorer.score_session([2, 0]), [2.0, 1.5, 1.0, 1.5])
    # three clicks weigh 1/3, 2/3, 1; a repeated item keeps its latest weight
    # [3, 0, 3]: 0 -> 2/3, 3 -> 1; sims S0 = 2/3, S1 = 0 (no shared item), S2 = 1, S3 = 5/3
    np.testing.assert_allclose(scorer.score_session([3, 0, 3]), [7 / 3, 2 / 3, 1.0, 8 / 3])


def test_session_knn_keeps_the_k_most_similar_neighbours():
    scorer = SessionKNN.fit(sessions(*SKNN_TRAIN), n_items=4, k=2)
    # [0, 2]: the neighbours are S1 and S2 (sim 1 each)
    np.testing.assert_allclose(scorer.score_session([0, 2]), [0.0, 1.0, 2.0, 1.0])
    # [2, 0]: the neighbours are S0 and S3 (sim 1 each)
    np.testing.assert_allclose(scorer.score_session([2, 0]), [2.0, 1.0, 0.0, 1.0])


def test_session_knn_samples_the_most_recent_candidate_sessions():
    scorer = SessionKNN.fit(sessions(*SKNN_TRAIN), n_items=4, k=4, sample_size=2)
    # all four sessions share an item with [0, 2]; only S2 (sim 1) and S3 (sim 1/2) remain
    np.testing.assert_allclose(scorer.score_session([0, 2]), [0.5, 0.0, 1.0, 1.5])


def test_session_knn_follows_keep_and_reset_of_the_slots():
    scorer = SessionKNN.fit(sessions(*SKNN_TRAIN), n_items=4, k=4)
    scorer.start(2)
    scorer.advance(step([0, 1]))
    second = scorer.advance(step([2, 3]))  # slot 0 has seen [0, 2], slot 1 [1, 3]
    torch.testing.assert_close(second[0], torch.tensor([1.0, 1.5, 2.0, 1.5]))
    # slot 1 starts a new session with item 0: its history is [0], not [1, 3, 0]
    third = scorer.advance(step([3, 0], reset=[False, True]))
    np.testing.assert_allclose(third[1].numpy(), scorer.score_session([0]))
    np.testing.assert_allclose(third[0].numpy(), scorer.score_session([0, 2, 3]))
    # the batch shrinks to the old slot 1, which goes on with [0, 2]
    fourth = scorer.advance(step([2], keep=[1]))
    assert fourth.shape == (1, 4)
    torch.testing.assert_close(fourth[0], torch.tensor([1.0, 1.5, 2.0, 1.5]))


@pytest.fixture(scope="module")
def small_split():
    cat = generate(n_items=120, n_sessions=900, n_categories=6, days=3.0, seed=5)
    lookup = {item: i for i, item in enumerate(cat.item_ids)}
    items = cat.events.ItemId.map(lookup).to_numpy(np.int64)
    lengths = cat.events.groupby("SessionId", sort=False).size().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    whole = sessions(*[items[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    cut = 800
    train = Sessions(whole.items[: offsets[cut]], offsets[: cut + 1], whole.session_ids[:cut])
    test = sessions(*[whole.session(s) for s in range(cut, whole.n_sessions)])
    return train, test, cat.n_items


def replay_ranks(score_prefix, test: Sessions) -> np.ndarray:
    """Conservative ranks computed session by session, with no batching at all (in float32,
    as the scorers return: rounding can turn near-ties into ties)."""
    ranks = []
    for s in range(test.n_sessions):
        clicks = test.session(s)
        for t in range(len(clicks) - 1):
            scores = np.asarray(score_prefix(list(clicks[: t + 1])), dtype=np.float32)
            ranks.append((scores >= scores[clicks[t + 1]]).sum())
    return np.array(ranks)


def test_session_parallel_evaluation_matches_a_session_by_session_replay(small_split):
    train, test, n_items = small_split
    knn = SessionKNN.fit(train, n_items, k=20, sample_size=50)
    expected = metrics_from_ranks(replay_ranks(knn.score_session, test), (5, 20))
    got = evaluate(knn, test, cutoffs=(5, 20), batch_size=7)  # many resets and a shrinking end
    for name, value in expected.items():
        assert got[name] == pytest.approx(value)


def test_item_knn_and_most_popular_evaluate_like_their_replays(small_split):
    train, test, n_items = small_split
    item_knn = ItemKNN.fit(train, n_items)
    dense = torch.zeros(n_items, n_items)
    for row, (cols, sims) in enumerate(zip(item_knn.neighbours, item_knn.similarity, strict=True)):
        for col, sim in zip(cols.tolist(), sims.tolist(), strict=True):
            if sim > 0:  # zero similarity marks padding
                dense[row, col] = sim
    popular = np.bincount(train.items, minlength=n_items).astype(np.float32)
    for scorer, score_prefix in (
        (item_knn, lambda clicks: dense[clicks[-1]].numpy()),
        (MostPopular.fit(train, n_items), lambda clicks: popular),
    ):
        expected = metrics_from_ranks(replay_ranks(score_prefix, test), (20,))
        got = evaluate(scorer, test, cutoffs=(20,), batch_size=5)
        assert got["recall@20"] == pytest.approx(expected["recall@20"])
        assert got["mrr@20"] == pytest.approx(expected["mrr@20"])


def test_fit_and_evaluate_reports_every_baseline_in_the_table(small_split):
    train, test, n_items = small_split
    results = fit_and_evaluate(train, test, n_items, cutoffs=(20,))
    assert list(results) == ["most-popular", "item-knn", "v-sknn"]
    assert results["item-knn"]["recall@20"] > results["most-popular"]["recall@20"]
    table = results_table(results, cutoffs=(20,))
    assert table.splitlines()[0].startswith("| model | Recall@20 | MRR@20 | NDCG@20")
    assert f"{results['v-sknn']['mrr@20']:.4f}" in table


def test_compare_reads_train_and_test_files_into_a_table_row_per_baseline(tmp_path):
    from training.data.logs import write_events
    from training.evaluation.baselines import compare

    cat = generate(n_items=80, n_sessions=400, n_categories=4, days=2.0, seed=1)
    ev = cat.events
    cut = ev.SessionId.isin(ev.SessionId.unique()[-40:])
    write_events(ev[~cut], tmp_path / "train.tsv")
    test = ev[cut][ev[cut].ItemId.isin(ItemVocab.from_events(ev[~cut]).index)]
    write_events(test[test.groupby("SessionId").ItemId.transform("size") >= 2], tmp_path / "t.tsv")
    table = compare(tmp_path / "train.tsv", tmp_path / "t.tsv", cutoffs=(5, 20))
    lines = table.splitlines()
    assert lines[0] == (
        "| model | Recall@5 | MRR@5 | NDCG@5 | Recall@20 | MRR@20 | NDCG@20 | train s |"
    )
    assert len(lines) == 7
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "most-popular", "item-knn", "v-sknn", "stan", "vstan",
    ]  # fmt: skip


def test_the_cli_prints_the_tuned_knn_settings_as_report_reads_them_and_the_predictions(
    tmp_path, capsys
):
    import json

    from training.__main__ import main
    from training.data.logs import read_events, write_events
    from training.evaluation.knn import KNNParams

    ev = generate(n_items=60, n_sessions=300, n_categories=4, days=3.0, seed=3).events
    last = ev.SessionId.isin(ev.SessionId.unique()[-40:])
    write_events(ev[~last], tmp_path / "train.tsv")
    write_events(ev[last], tmp_path / "test.tsv")
    main(["baselines", "--train", str(tmp_path / "train.tsv"), "--test", str(tmp_path / "test.tsv")]
         + ["--cutoffs", "20", "--tune-trials", "2", "--quiet"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    tuned = json.loads(lines[lines.index(next(x for x in lines if "--knn-params" in x)) + 1])
    assert set(tuned) == {"stan", "vstan"}
    assert all(isinstance(KNNParams(**values), KNNParams) for values in tuned.values())
    vocab = ItemVocab.from_events(read_events(tmp_path / "train.tsv"))
    test = Sessions.from_events(read_events(tmp_path / "test.tsv"), vocab, "drop")
    n = int(np.maximum(np.diff(test.offsets) - 1, 0).sum())  # what evaluate scores
    assert lines[-1].startswith(f"{n:,} predictions")
