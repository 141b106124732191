"""The blend of the model with the online layer: blend() against hand-computed softmaxes and
weighted sums, the stale rule through a Recommender, and a replay on a small stream whose
catalogue changes, where the blend must beat the frozen model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from service.learning.catalogue import Catalogue
from service.learning.guard import GuardConfig, LearningGuard
from service.learning.online import OnlineModel
from service.pipeline.blend import (
    SOURCE_MODEL,
    SOURCE_ONLINE,
    BlendConfig,
    OnlineLayer,
    Ranked,
    blend,
    softmax,
)
from service.pipeline.decode import Limits
from service.pipeline.recommender import Recommender
from service.pipeline.sessions import SessionCache
from service.proto import recommender_pb2 as pb
from service.runtime import ExportedModel
from service.tools.replay import Click, build_engine, replay
from tests.service.conftest import TinyModel

T0 = 1_700_000_000.0


def ranked(scores: dict[str, float]) -> Ranked:
    return Ranked(list(scores), np.array(list(scores.values()), dtype=np.float32))


def math_softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(x - max(logits)) for x in logits]
    return [e / sum(exps) for e in exps]


# --- blend() and softmax() against hand-computed values ---


def test_softmax_matches_the_textbook_formula_and_survives_huge_logits():
    logits = [2.0, 1.0, 0.0, -3.5]
    got = softmax(np.array(logits, dtype=np.float32))
    assert got.dtype == np.float64
    assert got.tolist() == pytest.approx(math_softmax(logits), rel=1e-12)
    assert softmax(np.array([1000.0, 0.0])).tolist() == [1.0, 0.0]  # exp(1000) would overflow
    assert softmax(np.zeros(0, dtype=np.float32)).shape == (0,)


def test_blend_is_the_weighted_sum_of_the_model_softmax_and_the_online_scores():
    model = ranked({"a": 2.0, "b": 1.0, "c": 0.0})
    online = ranked({"b": 0.5, "d": 0.2})
    pa, pb_, pc = math_softmax([2.0, 1.0, 0.0])
    expected = {
        "a": 0.6 * pa,
        "b": 0.6 * pb_ + 0.4 * 0.5,  # both sides rank b: the parts add up
        "c": 0.6 * pc,
        "d": 0.4 * 0.2,  # only the online side knows d
    }
    ids, scores, sources = blend(model, online, k=10, weight=0.6)
    assert ids == sorted(expected, key=expected.__getitem__, reverse=True) == ["a", "b", "d", "c"]
    assert scores == pytest.approx([expected[i] for i in ids], rel=1e-6)
    # b: 0.6 * 0.245 = 0.147 from the model, 0.2 from the online side
    assert sources == [SOURCE_MODEL, SOURCE_ONLINE, SOURCE_ONLINE, SOURCE_MODEL]


def test_an_item_only_the_online_side_knows_wins_on_its_online_evidence():
    model = ranked({"old": 0.0})  # the model's only candidate: probability 1
    online = ranked({"new": 0.9, "old": 0.05})
    ids, scores, sources = blend(model, online, k=2, weight=0.4)
    assert ids == ["new", "old"]
    assert scores == pytest.approx([0.6 * 0.9, 0.4 + 0.6 * 0.05])
    assert sources == [SOURCE_ONLINE, SOURCE_MODEL]


def test_a_side_without_a_share_proposes_nothing():
    model = ranked({"a": 1.0, "b": 0.0})
    online = ranked({"c": 0.9})
    assert blend(model, online, k=5, weight=1.0)[0] == ["a", "b"]
    assert blend(model, online, k=5, weight=0.0)[0] == ["c"]
    assert blend(None, online, k=5, weight=0.5)[0] == ["c"]
    assert blend(model, None, k=5, weight=0.5)[0] == ["a", "b"]
    assert blend(None, None, k=5, weight=0.5) == ([], [], [])


def test_equal_scores_keep_the_model_order_then_the_online_order_and_k_cuts():
    model = ranked({"a": 0.0, "b": 0.0})  # 0.5 each
    online = ranked({"d": 0.5, "c": 0.5})
    # every score is 0.25 exactly: 0.5 x 0.5 from either side
    assert blend(model, online, k=4, weight=0.5)[0] == ["a", "b", "d", "c"]
    assert blend(model, online, k=3, weight=0.5)[0] == ["a", "b", "d"]


@pytest.mark.parametrize("settings", [{"model_weight": 1.5}, {"stale_factor": -0.1}])
def test_a_weight_outside_zero_to_one_is_refused(settings: dict[str, Any]):
    with pytest.raises(ValueError, match="must be in"):
        BlendConfig(**settings)


# --- the stale rule, through the recommender ---


def test_the_model_weighs_stale_factor_less_when_the_last_click_is_new_to_it(tiny: TinyModel):
    config = BlendConfig(model_weight=0.8, stale_factor=0.25, candidates=10, scorer="mixture")
    layer = OnlineLayer(OnlineModel(), config)
    model = ExportedModel.load(tiny.export_dir, "cpu", threads=1)
    guard = LearningGuard(GuardConfig(), Catalogue())  # the new items announced, as a site would
    guard.catalogue.put([(f"new-{i}", 0.0) for i in range(10)], T0)
    engine = Recommender(model, SessionCache(100, 3600.0), Limits(), online=layer, guard=guard)
    known = tiny.item_ids[3]
    for s, clicks in enumerate([[known, "new-1", "new-2"], ["new-9", known, "new-3"]] * 3):
        for n in range(1, len(clicks) + 1):  # one request per click, as a frontend sends them
            layer.learn(f"h{s}", clicks[:n], T0 + s)
    # both sessions' only known click is `known`: the model's part is the same, and only
    # whether the last click is new to the model tells them apart
    logits = tiny.scores_after([known])
    top = np.argsort(-logits, kind="stable")[:10]
    model_part = Ranked([tiny.item_ids[i] for i in top], logits[top])
    now = T0 + 100
    for clicks, weight in (([known, "new-1"], 0.8 * 0.25), (["new-1", known], 0.8)):
        request = pb.RecommendRequest(session_id="", clicks=clicks, top_k=5)
        result = engine.recommend_now(engine.decode(request), now=now)
        ids, scores, sources = blend(model_part, layer.propose(clicks, now, ()), 5, weight)
        assert result.item_ids == ids
        assert result.scores == pytest.approx(scores, rel=1e-5)
        assert result.item_sources == sources
    # after the new item, the online side's successor of new-1 leads the list
    stale = engine.recommend_now(engine.decode(pb.RecommendRequest(clicks=[known, "new-1"])), now)
    assert stale.item_ids[0] == "new-2"


# --- a replay on a changing catalogue ---


def churned_stream(known: list[str], seed: int = 0) -> tuple[list[Click], list[Click]]:
    """(history, test): sessions that follow fixed successor chains, a minute a click. The
    history's chains run through the model's items, and so do half the test's; the other
    half start on a known item and move on to new items released in waves during the test,
    as readers move on to today's news."""
    rng = np.random.default_rng(seed)

    def known_chain() -> list[str]:
        start = int(rng.integers(len(known)))
        return [known[(start + n) % len(known)] for n in range(4)]

    def news_chain(wave: int) -> list[str]:
        first = known[int(rng.integers(len(known)))]
        return [first, *(f"new-{wave}-{int(j)}" for j in rng.permutation(3)[:2]), "new-tail"]

    history = [
        Click(f"h{s}", item, T0 + 60 * (s + n))
        for s in range(60)
        for n, item in enumerate(known_chain())
    ]
    test: list[Click] = []
    for s in range(200):
        chain = news_chain(wave=s // 40) if s % 2 else known_chain()
        start = T0 + 86_400.0 + 60 * s
        test.extend(Click(f"t{s}", item, start + 60 * n) for n, item in enumerate(chain))
    return history, sorted(test, key=lambda c: c.time)


def test_on_a_churned_stream_the_blend_beats_the_frozen_model_on_all_next_clicks(
    tiny: TinyModel,
):
    history, test = churned_stream(tiny.item_ids)
    frozen = replay(build_engine(tiny.export_dir, online=False), history, test)
    blended = replay(build_engine(tiny.export_dir), history, test)
    assert frozen["n_predictions"] == blended["n_predictions"] == 3 * 200  # every next click
    assert frozen["unknown_target_share"] == 0.5  # the news sessions' targets
    assert frozen["recall@20"] < 0.5  # a third of the known targets, by chance
    assert blended["recall@20"] > frozen["recall@20"] + 0.3
    assert blended["mrr@20"] > frozen["mrr@20"] + 0.2
