"""The online ranker: features against the statistics they read, the listwise update moving
weight toward the evidence that predicts the next click, the report, the layer's state
outliving a model reload, and top_k beyond the candidate pool over a real server."""

from __future__ import annotations

import math
import urllib.request

import numpy as np
import pytest
import torch

from service.learning.online import OnlineModel
from service.learning.ranker import _F, FEATURES, PRIOR, OnlineRanker, RankerConfig, _Segments
from service.pipeline.blend import BlendConfig, OnlineLayer
from service.tools.replay import Click, build_engine, replay
from training.config import Config
from training.data.logs import ItemVocab
from training.export import export_model
from training.fit.train import save_model
from training.models.architectures import build_model

T0 = 1_700_000_000.0


def layer() -> OnlineLayer:
    """A layer whose weights learn from the first session on (min_teachers=1)."""
    return OnlineLayer(OnlineModel(), BlendConfig(), ranker=RankerConfig(min_teachers=1))


def test_features_read_the_statistics_of_both_clocks_and_the_session():
    ranker = OnlineRanker(OnlineModel())
    for clicks in (["a"], ["a", "b"], ["a", "b", "c"]):
        ranker.first.learn(clicks, T0)
        ranker.learn(clicks, T0)
    ids = ["b", "c", "z"]
    x = ranker.features(ids, ["x", "a"], T0, ["z", "b"], np.array([1.0, 0.0]), stale=False)
    assert x.shape == (3, len(FEATURES))

    # a -> b once, a -> c at the skip weight 0.5: out(a) = 1.5, plus smoothing (4 on the
    # 12 h clock, 1 on the 1 h one); on the log scale with floor 0.01: ln(1 + 100 v) / ln 101
    def log_share(v: float) -> float:
        return math.log(1 + 100 * v) / math.log(101)

    assert x[0, _F["transition_slow"]] == pytest.approx(log_share(1 / 5.5))
    assert x[0, _F["transition_fast"]] == pytest.approx(log_share(1 / 2.5))
    assert x[1, _F["transition_slow"]] == pytest.approx(log_share(0.5 / 5.5))
    assert x[2, _F["transition_slow"]] == 0.0
    # the model's softmax over its two candidates: z e / (e + 1), b 1 / (e + 1)
    p_b = 1 / (np.e + 1)
    assert x[0, _F["model_p"]] == pytest.approx(p_b)
    assert x[2, _F["model_logp"]] == pytest.approx((np.log(1 - p_b) + 10) / 10)
    assert x[1, _F["model_logp"]] == 0.0 and x[0, _F["model_logp_stale"]] == 0.0
    assert x[:2, _F["popularity_fast"]].tolist() == pytest.approx([1.0, 1.0])  # a, b, c once
    assert x[:2, _F["freshness"]].tolist() == pytest.approx([1.0, 1.0])  # first seen now
    assert x[2, _F["freshness"]] == 0.0  # never clicked
    y = ranker.features(["a", "b"], ["a", "b"], T0, [], None)
    assert y[:, _F["clicked"]].tolist() == [1.0, 1.0]
    assert y[:, _F["last_click"]].tolist() == [0.0, 1.0]


def test_a_stale_call_fills_the_stale_model_column_instead():
    ranker = OnlineRanker(OnlineModel())
    x = ranker.features(["z"], ["new"], T0, ["z"], np.array([0.0]), stale=True)
    assert x[0, _F["model_logp"]] == 0.0 and x[0, _F["model_logp_stale"]] == 1.0


def test_rank_orders_by_the_weighted_features_and_never_returns_excluded_items():
    ranker = OnlineRanker(OnlineModel())
    for s, clicks in enumerate((["a", "b"], ["a", "b"], ["a", "c"])):
        for n in range(1, len(clicks) + 1):
            ranker.first.learn(clicks[:n], T0 + s)
            ranker.learn(clicks[:n], T0 + s)
    ids, scores, _ = ranker.rank([], None, ["a"], T0 + 10, 3)
    x = ranker.features(ids, ["a"], T0 + 10)
    assert scores.tolist() == pytest.approx((x @ ranker.weights).tolist())
    assert ids[0] == "b" and list(scores) == sorted(scores, reverse=True)
    assert "b" not in ranker.rank([], None, ["a"], T0 + 10, 3, exclude={"b"})[0]


def _transitions_beat_popularity_stream(lay: OnlineLayer, n_sessions: int) -> None:
    """Sessions a_i -> b_i (b_i only ever follows a_i) among heavy clicks on five popular
    items: the last click's transition always predicts the next click, popularity never."""
    rng = np.random.default_rng(0)
    t = T0
    for s in range(n_sessions):
        for _ in range(5):  # a visitor on a popular page who leaves
            t += 1.0
            lay.learn(f"p{s}-{_}", [f"pop{rng.integers(5)}"], t)
        i = int(rng.integers(30))
        clicks = [f"a{i}", f"b{i}"]
        for n in (1, 2):
            t += 1.0
            lay.learn(f"s{s}", clicks[:n], t)
            lay.answer(f"s{s}", clicks[:n], None, t, (), 20)


def test_the_update_moves_weight_toward_the_transitions_that_predict_the_next_click():
    lay = layer()
    prior = lay.report()["weights"]
    _transitions_beat_popularity_stream(lay, 400)
    learnt = lay.report()["weights"]
    ratio = learnt["transition_slow"] / max(learnt["popularity_fast"], 1e-3)
    assert ratio > prior["transition_slow"] / prior["popularity_fast"]
    assert learnt["transition_slow"] > prior["transition_slow"]
    assert learnt["popularity_fast"] < prior["popularity_fast"]
    report = lay.report()
    assert report["updates"] > 300 and report["feedback"] == 400
    assert report["hit_rate"]["transition"] > 0.9  # b_i was always the top successor
    assert report["hit_rate"]["popularity_fast"] < report["hit_rate"]["transition"]


def test_repeating_the_last_click_is_learnt_not_flagged():
    """A shop where the next click is the item just clicked (a second look): the weight of
    last_click, 0 at first, grows until the repeat comes first."""
    lay = layer()
    t = T0
    for s in range(300):
        t += 1.0
        item = f"i{s % 40}"
        for n in (1, 2):
            lay.learn(f"s{s}", [item] * n, t)
            lay.answer(f"s{s}", [item] * n, None, t, (), 20)
    assert PRIOR.get("last_click", 0.0) == 0.0
    assert lay.report()["weights"]["last_click"] > 0.5
    ids, _, _ = lay.answer("q", ["i3"], None, t, (), 5)
    assert ids[0] == "i3"


def test_an_answer_teaches_once_and_only_for_the_click_right_after_it():
    lay = layer()
    lay.learn("s", ["a"], T0)
    lay.answer("s", ["a"], None, T0, (), 20)
    lay.learn("s", ["a", "b", "c"], T0 + 1)  # two clicks at once: b is the answer's target
    assert lay.report()["feedback"] == 1
    lay.learn("s", ["a", "b", "c"], T0 + 2)  # a repeated call teaches nothing more
    assert lay.report()["feedback"] == 1


def test_a_session_moves_the_weights_a_bounded_number_of_times():
    ranker = RankerConfig(max_updates_per_session=3, min_teachers=1)
    lay = OnlineLayer(OnlineModel(), BlendConfig(), ranker=ranker)
    clicks: list[str] = []
    for n in range(10):
        clicks.append("a" if n % 2 == 0 else "b")
        lay.learn("s", list(clicks), T0 + n)
        lay.answer("s", list(clicks), None, T0 + n, (), 20)
    assert lay.report()["updates"] == 3


def test_the_weights_stay_at_the_prior_until_enough_clients_have_taught():
    lay = OnlineLayer(OnlineModel(), BlendConfig(), ranker=RankerConfig(min_teachers=3))
    for n in range(30):  # two clients, many sessions: always the popular item
        lay.learn(f"s{n}", ["a"], T0 + n, client_id=f"c{n % 2}")
        lay.answer(f"s{n}", ["a"], None, T0 + n, (), 20)
        lay.learn(f"s{n}", ["a", "b"], T0 + n, client_id=f"c{n % 2}")
    report = lay.report()
    assert report["feedback"] == 30 and report["updates"] == 0
    assert report["weights"] == {f: PRIOR.get(f, 0.0) for f in FEATURES}
    lay.learn("s-new", ["a"], T0 + 40, client_id="c2")  # a third client
    lay.answer("s-new", ["a"], None, T0 + 40, (), 20)
    lay.learn("s-new", ["a", "b"], T0 + 40, client_id="c2")
    assert lay.report()["updates"] == 1


def test_once_open_no_client_takes_more_than_its_share_of_the_steps():
    """After min_teachers clients opened the gate, one client's fresh sessions take one
    step in min_teachers of the recent ones: alone on a quiet server, a single step."""
    lay = OnlineLayer(OnlineModel(), BlendConfig(), ranker=RankerConfig(min_teachers=3))

    def teach(session: str, client: str, t: float) -> None:
        lay.learn(session, ["a"], t, client_id=client)
        lay.answer(session, ["a"], None, t, (), 20)
        lay.learn(session, ["a", "b"], t, client_id=client)

    for _ in range(5):  # a -> b, learnt without feedback: b is among a's candidates
        lay.learn("", ["a", "b"], T0)
    for n in range(3):  # the gate opens with the third client's step
        teach(f"open-{n}", f"c{n}", T0 + n)
    assert lay.report()["updates"] == 1
    for n in range(60):
        teach(f"atk-{n}", "attacker", T0 + 10 + n)
    assert lay.report()["updates"] == 2  # its first step only
    attacker_steps = 1
    for n in range(60):  # many clients: each may step, and so the attacker again
        teach(f"crowd-{n}", f"crowd-{n}", T0 + 100 + n)
        before = lay.report()["updates"]
        teach(f"atk2-{n}", "attacker", T0 + 100 + n)
        attacker_steps += lay.report()["updates"] - before
    report = lay.report()
    assert report["updates"] == 2 + 60 + attacker_steps - 1
    assert attacker_steps == 30  # every other round: a third of the 92 steps
    assert report["feedback"] == 3 + 60 + 120


def test_the_mixture_scorer_is_still_there_behind_the_switch():
    lay = OnlineLayer(OnlineModel(), BlendConfig(scorer="mixture"))
    assert lay.ranker is None and set(lay.report()) == {"size"}
    lay.learn("s", ["a"], T0)
    lay.learn("s", ["a", "b"], T0 + 1)
    assert lay.answer("q", ["a"], None, T0 + 2, (), 5)[0][0] == "b"
    with pytest.raises(ValueError, match="scorer"):
        BlendConfig(scorer="magic")


def test_replay_reports_the_learnt_weights_and_hit_rates(tiny):
    items = tiny.item_ids
    test, t = [], T0
    for s in range(60):  # more sessions than min_teachers (a replay has no client ids)
        for item in (items[s % 7], items[7 + s % 7]):
            t += 1.0
            test.append(Click(f"s{s}", item, t))
    engine = build_engine(tiny.export_dir)
    figures = replay(engine, [], test)
    online = figures["online"]
    assert set(online["weights"]) == set(FEATURES)
    assert set(online["hit_rate"]) >= {"model", "transition", "popularity_fast", "ranker"}
    assert online["feedback"] == figures["n_predictions"] == 60
    assert online["weights"] != {f: PRIOR.get(f, 0.0) for f in FEATURES}  # it learnt


def test_the_online_layer_and_its_weights_outlive_a_model_reload(start_server, tiny):
    """The server keeps one OnlineLayer across reloads: what the ranker learnt before the
    new model came is what ranks after it."""
    running = start_server()
    server = running.server
    layer_before, engine_before = server.online, server.handlers.engine
    for s in range(60):
        clicks = [tiny.item_ids[s % 5], tiny.item_ids[10 + s % 5]]
        for n in (1, 2):
            running.client.recommend(f"s{s}", clicks[:n], top_k=5)
    learnt = server.online.report()
    assert learnt["updates"] > 0
    assert server.reload() is True  # forced: the export is loaded again, a new engine
    assert server.handlers.engine is not engine_before
    assert server.handlers.engine.online is layer_before is server.online
    after = server.online.report()
    # the size in bytes changes: the old model's item indices went back to the table
    assert {**after, "size": after["size"]["items"]} == {**learnt, "size": learnt["size"]["items"]}


def test_metrics_export_the_learnt_weights_and_hit_rates(served, tiny):
    for s in range(5):
        clicks = [tiny.item_ids[s], tiny.item_ids[s + 10]]
        for n in (1, 2):
            served.client.recommend(f"s{s}", clicks[:n], top_k=5)
    text = urllib.request.urlopen(served.metrics_url, timeout=5).read().decode()
    weights = served.server.online.report()["weights"]
    line = f'recsys_online_weight{{feature="transition_slow"}} {weights["transition_slow"]!r}'
    assert line in text
    assert 'recsys_online_source_hit_rate{source="ranker"}' in text
    assert "recsys_online_feedback_total 5.0" in text


def test_metrics_gauge_the_online_layers_size(served, tiny):
    for s in range(3):
        served.client.recommend(f"s{s}", [tiny.item_ids[s], tiny.item_ids[s + 10]], top_k=5)
    size = served.server.online.report()["size"]  # as /metrics reads it: answers kept
    assert size["items"] == 3 and size["transitions"] == 0  # new sessions: last clicks only
    assert size["kept_answers"] == 3  # one per session, for its next click
    statistics = served.server.online.model.memory_bytes()
    statistics += served.server.online.ranker.second.memory_bytes()
    assert size["bytes"] > statistics + 3 * 1000  # the answers' rows count too
    text = urllib.request.urlopen(served.metrics_url, timeout=5).read().decode()
    assert 'recsys_online_size{what="items"} 3.0' in text
    assert 'recsys_online_size{what="transitions"} 0.0' in text
    assert 'recsys_online_size{what="kept_answers"} 3.0' in text
    assert f'recsys_online_size{{what="bytes"}} {float(size["bytes"])!r}' in text


def test_the_ranker_widens_its_pool_to_k():
    ranker = OnlineRanker(OnlineModel(), RankerConfig(model_candidates=50))
    model_ids = [f"m{i}" for i in range(400)]
    logits = -np.arange(400, dtype=np.float64) / 100
    ids, _, _ = ranker.rank(model_ids, logits, ["m0"], T0, 300)
    assert len(ids) == 300 and len(set(ids)) == 300


@pytest.fixture(scope="module")
def wide_export(tmp_path_factory: pytest.TempPathFactory):
    """A random GRU4Rec over 1,200 items: more than the candidate pool (100) and than the
    contract's largest top_k (1,000)."""
    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    cfg = Config(layers=(8,), n_epochs=0)
    item_ids = [f"w{i:04d}" for i in range(1200)]
    model = build_model(len(item_ids), cfg).eval()
    popularity = np.ones(len(item_ids), np.int64)
    save_model(root / "model", model, cfg, ItemVocab(item_ids), popularity, {})
    export_model(root / "model", root / "export")
    return root / "export", item_ids


@pytest.mark.parametrize("top_k", [300, 1000])
def test_top_k_beyond_the_candidate_pool_is_honoured_with_the_online_layer_on(
    start_server, wide_export, top_k
):
    export, item_ids = wide_export
    running = start_server(model_dir=export)  # the shipped configuration: online layer on
    assert running.server.online is not None
    reply = running.client.recommend("s", item_ids[:3], top_k=top_k)
    ids = [it.item_id for it in reply.items]
    assert len(ids) == top_k and len(set(ids)) == top_k


def test_the_grid_ranking_and_top_membership_match_a_stable_sort_per_call():
    rng = np.random.default_rng(3)
    sizes = np.array([40, 1, 0, 25, 33])
    values = rng.integers(0, 6, (3, int(sizes.sum()))).astype(np.float64)  # many ties
    segments = _Segments(sizes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    for s in range(3):
        _, rank = segments.rank(values[s])
        for start, size in zip(starts, sizes, strict=True):
            expected = np.empty(size, np.intp)
            expected[np.argsort(-values[s, start : start + size], kind="stable")] = range(size)
            assert rank[start : start + size].tolist() == expected.tolist()
        assert (segments.in_top(values, 20)[s] == (rank < 20)).all()


def test_a_batch_of_feedback_takes_the_sum_of_its_steps_from_the_same_weights():
    ranker = OnlineRanker(OnlineModel(), RankerConfig(l2=0.01, min_teachers=1))
    for s, clicks in enumerate((["a", "b"], ["a", "c"], ["d", "b"])):
        for n in (1, 2):
            ranker.first.learn(clicks[:n], T0 + s)
            ranker.learn(clicks[:n], T0 + s)
    ranker.rank([], None, ["a"], T0 + 5, 5, session_id="s1")
    ranker.rank([], None, ["d"], T0 + 5, 5, session_id="s2")
    ranker.settle()
    answers = [ranker._pending["s1"], ranker._pending["s2"]]
    w = ranker.weights.copy()
    assert ranker.feedback("s1", 2, "c") and ranker.feedback("s2", 2, "b")

    def step(answer, item):  # one listwise step from w, as the module docstring has it
        x = answer.x.astype(np.float64) / 32767.0
        p = np.exp(x @ w - (x @ w).max())
        p /= p.sum()
        i = answer.place(item, ranker.first.table)
        return x[i] - p @ x - 0.01 * (w - ranker.prior)

    expected = w + 0.05 * (step(answers[0], "c") + step(answers[1], "b"))
    assert ranker.weights == pytest.approx(expected)


def test_a_kept_row_is_found_by_its_id_and_not_through_an_index_given_again():
    ranker = OnlineRanker(OnlineModel())
    ranker.first.learn(["a"], T0)
    ranker.first.learn(["a", "b"], T0)
    ranker.rank([], None, ["a"], T0, 5, session_id="s", exclude=())
    ranker.settle()
    answer = ranker._pending["s"]
    table = ranker.first.table
    assert answer.place("b", table) >= 0 and answer.place("zzz", table) == -1
    b = table.get("b")
    answer.generation = -1  # as if b's index had been given to it after the answer
    assert not table.since(b, answer.generation) and answer.place("b", table) == -1


def test_answers_are_kept_after_the_callers_have_them_and_before_any_feedback():
    """rank_many() leaves keeping its answers to settle() (the server calls it once the
    batch's answers are out); feedback() settles first, and the kept answer carries the
    table's generation of when it was ranked, not of when it was kept."""
    ranker = OnlineRanker(OnlineModel(), RankerConfig(min_teachers=1))
    for clicks in (["a"], ["a", "b"], ["a"], ["a", "c"]):
        ranker.first.learn(clicks, T0)
    ranker.rank([], None, ["a"], T0, 5, session_id="s")
    assert "s" not in ranker._pending
    ranked_at = ranker.first.table.generation
    ranker.first.learn(["x"], T0)  # a new item after the answer, before it is kept
    assert ranker.first.table.generation != ranked_at
    assert ranker.feedback("s", 2, "b")  # settled first: the answer to ["a"] teaches
    assert ranker._pending["s"].generation == ranked_at
    ranker.rank([], None, ["a", "b"], T0, 5, session_id="t")
    ranker.rank([], None, ["a"], T0, 5, session_id="u")  # settles t's, leaves u's
    assert "t" in ranker._pending and "u" not in ranker._pending
    assert ranker.report()["pending_answers"] == 3


def test_the_sources_tops_match_their_sorted_definition_in_a_batch():
    """_source_tops() skips sorting where the order is known (the model's candidates come
    first, a clock's popular items are its own ranking): it must agree with each source's
    TOP best values per call, ties aside, with and without exclusions."""
    from service.learning.ranker import TOP, RankQuery

    rng = np.random.default_rng(5)
    ranker = OnlineRanker(OnlineModel())
    items = [f"i{j}" for j in range(300)]
    for s in range(400):  # distinct click counts, so popularity has no ties
        clicks = [items[int(j)] for j in rng.zipf(1.3, 3) % 300]
        for n in range(1, 4):
            t = T0 + s + n / 10
            ranker.first.learn(clicks[:n], t)
            ranker.learn(clicks[:n], t)
    for exclude in ((), ("i0", "i1", "i2")):
        queries = []
        for q in range(6):
            model = rng.choice(300, 60, replace=False)
            model = [items[j] for j in model if items[j] not in exclude]
            model = model[: ranker.config.model_candidates]  # what the service passes
            logits = np.sort(rng.normal(size=len(model)))[::-1].copy()
            clicks = [items[int(j)] for j in rng.integers(300, size=3)]
            queries.append(RankQuery(model, logits, clicks, T0 + 500, 20, set(exclude), False,
                                     f"q{q}"))  # fmt: skip
        batch = ranker._gather(queries)
        x = ranker._columns(batch)
        segments = _Segments(batch.pool.sizes)
        values = ranker._source_matrix.T @ x
        expected = segments.in_top(values, TOP) & (values > 0)
        assert (ranker._source_tops(batch, x, segments) == expected).all()
        assert batch.model_first and (batch.popular is None) == bool(exclude)
