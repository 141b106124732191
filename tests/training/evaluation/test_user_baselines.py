"""The user baselines against hand-computed cases: one LearnBPR step, item2vec's pairs and
one skip-gram update, the FM's O(kn) formula against its O(kn^2) definition, NeuMF's forward
on fixed weights against numpy; and each through evaluate_users."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from training.data.logs import ItemVocab
from training.data.user_batching import UserSessions
from training.evaluation.user_baselines import (
    BPRMF,
    BPRParams,
    Item2Vec,
    Item2VecParams,
    bpr_sgd_step,
    item2vec_pairs,
    sgns_step,
)
from training.evaluation.user_evaluate import evaluate_users
from training.evaluation.user_neural import (
    FactorizationMachine,
    FMScorer,
    NCFScorer,
    NeuMF,
    TrainParams,
    fm_score,
)


def test_one_bpr_sgd_step_on_a_two_user_three_item_toy_by_hand():
    P = np.array([[0.1, 0.2], [0.3, -0.1]])
    Q = np.array([[0.5, 0.1], [-0.2, 0.4], [0.0, 0.3]])
    # user 0 clicked item 1, not item 2: x = p0 . (q1 - q2) = -0.02 + 0.02 = 0, g = 0.5
    loss = bpr_sgd_step(P, Q, np.array([0]), np.array([1]), np.array([2]), lr=0.1, reg=0.01)
    assert loss == pytest.approx(math.log(2))
    # p0 += 0.1 (0.5 (q1 - q2) - 0.01 p0); q1 += 0.1 (0.5 p0 - 0.01 q1);
    # q2 += 0.1 (-0.5 p0 - 0.01 q2)
    np.testing.assert_allclose(P, [[0.0899, 0.2048], [0.3, -0.1]])
    np.testing.assert_allclose(Q, [[0.5, 0.1], [-0.1948, 0.4096], [-0.005, 0.2897]])


def _plan(rows: list[tuple[str, str, list[int]]], n_items: int) -> UserSessions:
    """[(user, session, items)], sessions an hour apart."""
    frame = pd.DataFrame(
        [(s, str(i), 3600.0 * n + k, u) for n, (u, s, items) in enumerate(rows)
         for k, i in enumerate(items)],
        columns=["SessionId", "ItemId", "Time", "UserId"],
    )  # fmt: skip
    return UserSessions.from_events(frame, ItemVocab([str(i) for i in range(n_items)]))


def test_bpr_mf_ranks_a_users_items_first_and_gives_strangers_popularity():
    rows = [
        (f"u{u}", f"s{u}{k}", [3 * u, 3 * u + 1, 3 * u + 2]) for u in range(3) for k in range(4)
    ]
    train = _plan(rows, 9)
    model = BPRMF.fit(train, 9, BPRParams(factors=8, epochs=60, batch=4, seed=1))
    model.start(2, np.array(["u1", "nobody"]))
    scores = model.score_users(model.plan_users, np.array([0, 0])).numpy()
    assert set(np.argsort(-scores[0])[:3]) == {3, 4, 5}
    np.testing.assert_array_equal(scores[1], np.bincount(train.items, minlength=9))


def test_item2vec_pairs_are_all_ordered_pairs_inside_a_session():
    items, offsets = np.array([5, 6, 7, 8, 9]), np.array([0, 3, 5])
    t, c = item2vec_pairs(items, offsets)
    assert list(zip(t.tolist(), c.tolist(), strict=True)) == [
        (5, 6), (5, 7), (6, 5), (6, 7), (7, 5), (7, 6), (8, 9), (9, 8),
    ]  # fmt: skip
    t, c = item2vec_pairs(items, offsets, window=1)
    assert list(zip(t.tolist(), c.tolist(), strict=True)) == [
        (5, 6), (6, 5), (6, 7), (7, 6), (8, 9), (9, 8),
    ]  # fmt: skip


def test_one_skip_gram_negative_sampling_update_by_hand():
    W_in = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    W_out = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # v . u_context = 0 and v . u_negative = 0: both sigmoids 0.5
    sgns_step(W_in, W_out, np.array([0]), np.array([1]), np.array([[2]]), lr=0.1)
    # v += 0.1 (0.5 u_c - 0.5 u_n); u_c += 0.1 * 0.5 v; u_n -= 0.1 * 0.5 v (v before the step)
    np.testing.assert_allclose(W_in[0], [1.0, 0.1])
    np.testing.assert_allclose(W_out[1], [0.05, 1.0])
    np.testing.assert_allclose(W_out[2], [-0.05, -1.0])


def test_item2vec_scores_neighbours_of_the_last_click_not_the_click_itself():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    scores = Item2Vec(vectors).score_users(np.array([-1]), np.array([0])).numpy()[0]
    assert np.argmax(scores) == 1 and scores[0] == -1.0


def test_fm_score_matches_the_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    x, w, V = torch.rand(4, 6, generator=gen), torch.randn(6, generator=gen), torch.randn(6, 3)
    w0 = torch.tensor(0.7)
    naive = w0 + x @ w
    for i in range(6):  # sum over i < j of <v_i, v_j> x_i x_j: O(k n^2)
        for j in range(i + 1, 6):
            naive = naive + (V[i] @ V[j]) * x[:, i] * x[:, j]
    torch.testing.assert_close(fm_score(x, w0, w, V), naive)


def test_the_fm_model_is_the_fm_formula_on_its_one_hot_fields():
    fm = FactorizationMachine(n_users=2, n_items=4, factors=3)
    with torch.no_grad():
        fm.w.normal_()
        fm.w0.fill_(0.3)
    users, last = torch.tensor([1, -1]), torch.tensor([2, 0])
    all_scores = fm.score_all(users, last)
    for b in range(2):
        for c in range(4):
            u, lst, cand = fm.features(users[b : b + 1], last[b : b + 1], torch.tensor([c]))
            x = torch.zeros(1, len(fm.w))
            x[0, [u.item(), lst.item(), cand.item()]] = 1.0
            expected = fm_score(x, fm.w0, fm.w, fm.V)
            torch.testing.assert_close(fm(users[b : b + 1], last[b : b + 1], torch.tensor([c])),
                                       expected)  # fmt: skip
            torch.testing.assert_close(all_scores[b, c], expected[0])


def test_neumf_forward_on_fixed_weights_matches_numpy():
    model = NeuMF(n_users=2, n_items=3, factors=2, tower=(3, 2))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    w = {k: v.detach().numpy() for k, v in model.named_parameters()}
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    u, lst, c = 1, 2, 0
    gmf = (w["user_g.weight"][u] + w["last_g.weight"][lst]) * w["item_g.weight"][c]
    h = np.concatenate([w["user_m.weight"][u], w["last_m.weight"][lst], w["item_m.weight"][c]])
    h = relu(w["tower.0.weight"] @ h + w["tower.0.bias"])
    h = relu(w["tower.1.weight"] @ h + w["tower.1.bias"])
    expected = w["out.weight"][0] @ np.concatenate([gmf, h]) + w["out.bias"][0]
    got = model(torch.tensor([u]), torch.tensor([lst]), torch.tensor([c]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    every = model.score_all(torch.tensor([u]), torch.tensor([lst]))[0]
    for cand in range(3):
        one = model(torch.tensor([u]), torch.tensor([lst]), torch.tensor([cand]))
        assert every[cand].item() == pytest.approx(one.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["bpr-mf", "item2vec", "fm", "ncf"])
def test_each_baseline_learns_a_users_habit_through_evaluate_users(kind):
    # user u clicks 3u, 3u + 1, 3u + 2 in some order: the user or the last click tells the
    # next one (and items of a session share contexts, which item2vec's similarity needs)
    orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    rows = [(f"u{u}", f"s{u}-{k}", [3 * u + i for i in orders[k % 3]])
            for u in range(3) for k in range(6)]  # fmt: skip
    train = _plan(rows, 10)
    test = _plan([(f"u{u}", f"t{u}", [3 * u, 3 * u + 1]) for u in range(3)], 10)
    fitted = {
        "bpr-mf": lambda: BPRMF.fit(train, 10, BPRParams(factors=8, epochs=100, batch=4)),
        "item2vec": lambda: Item2Vec.fit(train.items, train.offsets, 10,
                                         Item2VecParams(dim=8, epochs=200, batch=8)),
        "fm": lambda: FMScorer.fit(train, 10, TrainParams(factors=8, epochs=60, batch=8,
                                                          learning_rate=0.05)),
        "ncf": lambda: NCFScorer.fit(train, 10, TrainParams(factors=8, epochs=60, batch=8,
                                                            learning_rate=0.02)),
    }[kind]()  # fmt: skip
    result = evaluate_users(fitted, test, cutoffs=(3,))
    assert result["n_events"] == 3 and result["recall@3"] == 1.0


def test_the_tastes_oracle_adds_its_bonus_to_the_users_taste_items_only():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
    from compare_users import ORACLE_BONUS, TastesOracle

    class Flat:  # a session scorer whose scores are all zero
        def start(self, batch_size, user_ids):
            pass

        def advance(self, step):
            return torch.zeros(int(step.scored.sum()), 4)

    # items 0-3 in categories 0, 1, 1, 2; user "a" likes 1, user "b" likes 0 and 2
    oracle = TastesOracle(Flat(), {"a": {1}, "b": {0, 2}}, np.array([0, 1, 1, 2]), 3)
    oracle.start(2, np.array(["b", "a"]))
    step = type("Step", (), {"users": torch.tensor([1, 0, 1]),
                             "scored": torch.tensor([True, True, False])})()  # fmt: skip
    b = ORACLE_BONUS
    assert oracle.advance(step).tolist() == [[0, b, b, 0], [b, 0, 0, b]]
    # the news check gives the odds its generator gives the topics, log(taste_boost)
    odds = TastesOracle(Flat(), {"a": {1}, "b": {0, 2}}, np.array([0, 1, 1, 2]), 3, bonus=0.5)
    odds.start(2, np.array(["b", "a"]))
    assert odds.advance(step).tolist() == [[0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5]]


def test_the_news_check_averages_seeds_and_gives_hrnn_s_gain_per_seed():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
    from compare_news_readers import gains, mean_rows

    def row(method, recall, mrr):
        part = {"recall@20": recall, "mrr@20": mrr}
        return {"method": method, "overall": part, "returning": part,
                "returning_first": part, "train_seconds": 1.0}  # fmt: skip

    seeds = [[row("gru4rec", 0.5, 0.2), row("hrnn-init", 0.55, 0.25)],
             [row("gru4rec", 0.4, 0.1), row("hrnn-init", 0.4, 0.12)]]  # fmt: skip
    means = mean_rows(seeds)
    assert [r["method"] for r in means] == ["gru4rec", "hrnn-init"]
    assert means[1]["returning"] == pytest.approx({"recall@20": 0.475, "mrr@20": 0.185})
    assert gains(seeds) == [pytest.approx({"recall@20": 0.1, "mrr@20": 0.25}),
                            pytest.approx({"recall@20": 0.0, "mrr@20": 0.2})]  # fmt: skip


def test_history_tastes_are_the_categories_a_users_sessions_were_mostly_in():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
    from compare_users import history_tastes

    # items a-e in categories 0, 0, 1, 1, 2; "z" is not in the vocabulary
    vocab = ItemVocab(["a", "b", "c", "d", "e"])
    category = np.array([0, 0, 1, 1, 2])
    events = pd.DataFrame(
        {
            "SessionId": ["s1", "s1", "s1", "s2", "s2", "s3", "s3", "s3"],
            "ItemId": ["a", "c", "d", "e", "a", "z", "z", "b"],
            "Time": np.arange(8.0),
            "UserId": ["u", "u", "u", "u", "u", "v", "v", "v"],
        }
    )
    # s1: category 1 twice; s2: a tie of 0 and 2, the lower wins; s3: only b is known
    assert history_tastes(events, vocab, category) == {"u": {1, 0}, "v": {0}}
