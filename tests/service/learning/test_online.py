"""The online layer: each statistic against hand-computed decayed counts, the mixture, time
order, exclusions, caps and eviction, and memory against tracemalloc."""

from __future__ import annotations

import threading
import tracemalloc
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from service.learning.online import (
    SLACK,
    SOURCE_KNN,
    SOURCE_NAMES,
    SOURCE_POPULARITY,
    SOURCE_TRANSITION,
    SOURCE_TRANSITION2,
    SWEEP,
    OnlineConfig,
    OnlineModel,
)

T0 = 1_700_000_000.0
HOUR = 3600.0
OFF: dict[str, Any] = dict(w_transition=0.0, w_transition2=0.0, w_knn=0.0, w_popularity=0.0)


def only(**weights: float) -> OnlineConfig:
    """Every statistic off except the given weights; both clocks on a one-hour half-life."""
    return OnlineConfig(**{**OFF, "transition_half_life_s": HOUR, **weights})


def as_dict(result: tuple[list[str], np.ndarray, np.ndarray]) -> dict[str, float]:
    ids, scores, _ = result
    return dict(zip(ids, scores.tolist(), strict=True))


def random_stream(
    n_sessions: int, n_items: int, seed: int, mean_length: float = 4.0
) -> list[tuple[list[int], float]]:
    """(session so far as item numbers, time) per click, in time order; Zipf-like items."""
    rng = np.random.default_rng(seed)
    calls = []
    for s in range(n_sessions):
        clicks: list[int] = []
        for _ in range(1 + int(rng.geometric(1 / mean_length))):
            clicks.append(int(rng.zipf(1.3)) % n_items)
            calls.append((list(clicks), T0 + s))
    return calls


def fresh_ids(numbers: list[int]) -> list[str]:
    """Fresh id strings, as decoding a request makes them."""
    return [f"i{k:07d}" for k in numbers]


# --- each statistic against hand-computed values ---


def test_popularity_of_two_clicks_an_hour_apart_weighs_them_half_and_one():
    model = OnlineModel(only(w_popularity=1.0))
    model.learn(["a"], T0)
    model.learn(["b"], T0 + HOUR)
    got = as_dict(model.score([], T0 + HOUR, n=5))
    assert got == pytest.approx({"b": 1.0 / 1.5, "a": 0.5 / 1.5})


def test_decayed_popularity_matches_a_direct_sum_across_renormalisations():
    # a one-second half-life passes RENORM_HALF_LIVES within minutes, several times
    cfg = replace(only(w_popularity=1.0), half_life_s=1.0)
    model = OnlineModel(cfg)
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 2000, 300))
    clicks = rng.choice(["a", "b", "c", "d"], 300)
    for x, t in zip(clicks, times, strict=True):
        model.learn([str(x)], T0 + t)
    now = times[-1] + 0.5
    weight = {x: np.sum(2.0 ** -(now - times[clicks == x])) for x in "abcd"}
    total = sum(weight.values())
    expected = {x: w / total for x, w in weight.items() if w / total > 1e-12}
    got = as_dict(model.score([], T0 + now, n=4))
    assert {x: v for x, v in got.items() if v > 1e-12} == pytest.approx(expected, rel=1e-5)


def test_decayed_transitions_match_a_direct_sum_across_renormalisations():
    # the transition clock renormalises on its own: a one-second half-life, several times
    cfg = replace(only(w_transition=1.0, smoothing=0.5), transition_half_life_s=1.0)
    model = OnlineModel(cfg)
    rng = np.random.default_rng(9)
    times = np.sort(rng.uniform(0, 2000, 300))
    successors = rng.choice(["b", "c", "d"], 300)
    for x, t in zip(successors, times, strict=True):
        model.learn(["a"], T0 + t)
        model.learn(["a", str(x)], T0 + t)
    now = times[-1] + 0.5
    weight = {x: np.sum(2.0 ** -(now - times[successors == x])) for x in "bcd"}
    out = sum(weight.values()) + 0.5
    expected = {x: w / out for x, w in weight.items() if w / out > 1e-12}
    got = as_dict(model.score(["a"], T0 + now, n=3))
    assert {x: v for x, v in got.items() if v > 1e-12} == pytest.approx(expected, rel=1e-5)


def test_transitions_are_decayed_counts_over_out_mass_plus_smoothing():
    model = OnlineModel(only(w_transition=1.0, smoothing=0.5, skip_weight=0.25))
    model.learn(["a"], T0)
    model.learn(["a", "b"], T0)  # a -> b, weight 1/2 an hour later
    model.learn(["a"], T0 + HOUR)
    model.learn(["a", "c"], T0 + HOUR)  # a -> c, weight 1
    model.learn(["x"], T0 + HOUR)
    model.learn(["x", "a"], T0 + HOUR)
    model.learn(["x", "a", "b"], T0 + HOUR)  # a -> b 1 more; x -> b counts 1/4
    out_a = 0.5 + 1.0 + 1.0
    got = as_dict(model.score(["a"], T0 + HOUR, n=5))
    assert got == pytest.approx({"b": 1.5 / (out_a + 0.5), "c": 1.0 / (out_a + 0.5)})
    got_x = as_dict(model.score(["x"], T0 + HOUR, n=5))
    assert got_x == pytest.approx({"a": 1.0 / (1.25 + 0.5), "b": 0.25 / (1.25 + 0.5)})


def test_smoothing_shrinks_stale_transitions_towards_nothing():
    model = OnlineModel(only(w_transition=1.0, smoothing=1.0))
    model.learn(["a"], T0)
    model.learn(["a", "b"], T0)
    fresh = as_dict(model.score(["a"], T0, n=1))["b"]
    stale = as_dict(model.score(["a"], T0 + 3 * HOUR, n=1))["b"]
    assert fresh == pytest.approx(1 / (1 + 1))
    assert stale == pytest.approx(0.125 / (0.125 + 1))  # three half-lives later


def test_the_click_before_last_adds_its_successors_with_its_own_weight():
    model = OnlineModel(only(w_transition=1.0, w_transition2=0.5, smoothing=0.0))
    for session in (["a", "b"], ["c", "d"]):
        model.learn(session[:1], T0)
        model.learn(session, T0)
    ids, scores, sources = model.score(["a", "c"], T0, n=5)
    assert dict(zip(ids, scores.tolist(), strict=True)) == pytest.approx({"d": 1.0, "b": 0.5})
    assert sources.tolist() == [SOURCE_TRANSITION, SOURCE_TRANSITION2]


def test_session_knn_votes_are_the_neighbours_recency_weighted_item_shares():
    model = OnlineModel(only(w_knn=1.0, knn_query_items=2))
    for session, t in ((["a", "b", "c"], T0), (["a", "b", "d"], T0 + HOUR)):
        for k in range(1, 4):
            model.learn(session[:k], t)
    # both neighbours overlap in b (weight 1) and a (1/2); the older one counts half
    s_old, s_new = 1.5 * 0.5, 1.5 * 1.0
    mass = 3 * s_old + 3 * s_new
    got = as_dict(model.score(["a", "b"], T0 + HOUR, n=5))
    expected = {"a": 2.25 / mass, "b": 2.25 / mass, "c": s_old / mass, "d": s_new / mass}
    assert got == pytest.approx(expected)


def test_a_session_is_not_its_own_neighbour():
    model = OnlineModel(only(w_knn=1.0))
    for k in range(1, 4):
        model.learn(["a", "b", "c"][:k], T0)
    assert model.score(["a", "b", "c"], T0, n=5)[0] == []


def test_scores_are_the_weighted_mixture_and_sources_name_the_largest_term():
    cfg = only(w_transition=1.0, w_popularity=0.5, smoothing=0.0)
    model = OnlineModel(cfg)
    model.learn(["a"], T0)
    model.learn(["a", "b"], T0)
    for _ in range(6):
        model.learn(["p"], T0)
    ids, scores, sources = model.score(["a"], T0, n=3)
    # popularity shares: a 1/8, b 1/8, p 6/8; b's transition share is 1
    expected = {"b": 1.0 + 0.5 / 8, "p": 0.5 * 6 / 8, "a": 0.5 / 8}
    assert dict(zip(ids, scores.tolist(), strict=True)) == pytest.approx(expected)
    assert ids == ["b", "p", "a"]
    assert sources.tolist() == [SOURCE_TRANSITION, SOURCE_POPULARITY, SOURCE_POPULARITY]
    assert scores.dtype == np.float32 and sources.dtype == np.int8


# --- time order, exclusions, fresh items ---


def test_score_before_learn_does_not_see_the_click():
    model = OnlineModel()
    model.learn(["a"], T0)
    before = model.score(["a"], T0 + 1, n=10)
    assert "b" not in before[0]
    model.learn(["a", "b"], T0 + 1)
    assert "b" in model.score(["a"], T0 + 1, n=10)[0]


def test_score_changes_nothing_a_later_call_depends_on():
    calls = random_stream(300, 200, seed=1)
    a, b = (
        OnlineModel(replace(OnlineConfig(), w_knn=0.25)),
        OnlineModel(replace(OnlineConfig(), w_knn=0.25)),
    )
    for numbers, t in calls:
        clicks = fresh_ids(numbers)
        a.score(clicks, t, n=20, exclude=clicks[-1:])
        a.learn(clicks, t)
        b.learn(clicks, t)
    for numbers, t in calls[-50:]:
        clicks = fresh_ids(numbers)
        ra, rb = a.score(clicks, t + 5, n=20), b.score(clicks, t + 5, n=20)
        assert ra[0] == rb[0]
        np.testing.assert_array_equal(ra[1], rb[1])
    assert a.stats() == b.stats()


def test_score_never_returns_excluded_items():
    model = OnlineModel(replace(OnlineConfig(), w_knn=0.25))
    rng = np.random.default_rng(2)
    for numbers, t in random_stream(400, 60, seed=2):
        clicks = fresh_ids(numbers)
        exclude = set(fresh_ids(rng.choice(60, 30).tolist())) | set(clicks)
        got, scores, sources = model.score(clicks, t, n=20, exclude=exclude)
        assert not exclude & set(got)
        assert len(got) == len(set(got)) == len(scores) == len(sources) <= 20
        assert np.all(np.diff(scores) <= 0)
        model.learn(clicks, t)


def test_an_item_first_seen_a_second_ago_is_recommended_after_a_few_clicks():
    model = OnlineModel()
    for k in range(200):  # an established catalogue, clicked over the last hours
        t = T0 + 20 * k
        model.learn([f"old{k % 40}"], t)
        model.learn([f"old{k % 40}", f"old{(k + 1) % 40}"], t)
    now = T0 + 4000
    for s in range(3):  # three sessions reach the new story from the home page
        model.learn(["old0"], now - 1 + s * 0.1)
        model.learn(["old0", "fresh"], now - 1 + s * 0.1 + 0.05)
    assert "fresh" in model.score(["old0"], now, n=3)[0]
    for s in range(8):  # and a few more clicks make it the most popular of the moment
        model.learn([f"new-visitor-{s}", "fresh"], now)
    assert model.score([], now, n=3)[0][0] == "fresh"


def test_an_empty_session_gets_the_most_popular_and_n_zero_gets_nothing():
    model = OnlineModel()
    for x in "aab":
        model.learn([x], T0)
    assert model.score([], T0, n=5)[0] == ["a", "b"]
    assert model.score(["a"], T0, n=0)[0] == []
    assert model.score(["never-seen"], T0, n=1)[0] == ["a"]


def test_popularity_only_candidates_come_from_the_sorted_list_not_a_scan_of_all_items():
    model = OnlineModel(replace(only(w_popularity=1.0), popular_candidates=5))
    for k in range(40):
        for _ in range(k + 1):
            model.learn([f"i{k:02d}"], T0)
    ids = model.score([], T0, n=30)[0]
    assert 5 <= len(ids) <= 10  # the list holds popular_candidates to twice that
    assert ids == [f"i{k:02d}" for k in range(39, 39 - len(ids), -1)]


# --- caps, eviction, memory ---


def test_caps_bound_items_transitions_and_sessions_and_keep_the_strongest():
    cfg = replace(OnlineConfig(), max_items=100, max_transitions=300, max_sessions=50, w_knn=0.25)
    model = OnlineModel(cfg)
    for numbers, t in random_stream(2000, 5000, seed=3):
        model.learn(fresh_ids(numbers), t)
        model.learn(["star"], t)  # clicked all the time: never the weakest
        model.learn(["star", "follows-star"], t)  # the strongest transition
        stats = model.stats()
        assert stats["items"] <= cfg.max_items
        assert stats["transitions"] <= cfg.max_transitions
        assert stats["sessions"] <= cfg.max_sessions
        # lists of evicted items wait for the list sweep, a step per eviction
        assert stats["sources"] <= SLACK * cfg.max_items
    assert model.score([], t, n=1)[0] == ["star"]
    assert model.score(["star"], t, n=1)[0] == ["follows-star"]


class CountingDeque(deque):
    """A sweep queue that counts what a learn() call takes from it."""

    def __init__(self, items=()):
        super().__init__(items)
        self.taken = 0

    def popleft(self):
        self.taken += 1
        return super().popleft()


def test_a_learn_call_over_the_caps_visits_a_bounded_number_of_entries():
    # eviction used to be one pass over a whole structure in a single learn(): about 0.3 s
    # at 250,000 transitions, on the service's event loop. Now a call over a cap visits at
    # most SWEEP items and SWEEP successor lists, however large the model, and the caps hold
    # after every call. Counted, not timed: a shared machine makes times noisy
    cfg = replace(OnlineConfig(), max_items=2000, max_transitions=5000)
    model = OnlineModel(cfg)
    model._items_sweep = CountingDeque(model._items_sweep)
    model._lists_sweep = CountingDeque(model._lists_sweep)
    most_items = most_lists = evicting_calls = 0
    for numbers, t in random_stream(12_000, 200_000, seed=8):
        model._items_sweep.taken = model._lists_sweep.taken = 0
        model.learn(fresh_ids(numbers), t)
        stats = model.stats()
        assert stats["items"] <= cfg.max_items
        assert stats["transitions"] <= cfg.max_transitions
        assert stats["sources"] <= SLACK * cfg.max_items
        most_items = max(most_items, model._items_sweep.taken)
        most_lists = max(most_lists, model._lists_sweep.taken)
        evicting_calls += model._items_sweep.taken > 0
    assert stats["items"] == cfg.max_items  # 6,400 distinct items: well past both caps
    assert stats["transitions"] > 0.95 * cfg.max_transitions
    assert evicting_calls > 1000  # the caps were reached early and held by eviction
    assert 0 < most_items <= SWEEP and 0 < most_lists <= SWEEP, (most_items, most_lists)


def test_a_successor_list_keeps_its_strongest_when_trimmed():
    model = OnlineModel(replace(only(w_transition=1.0), max_successors=3))
    for k in range(6):  # b0 is followed 6 times, b5 once: b5 makes six, and the trim
        for _ in range(6 - k):
            model.learn(["a"], T0)
            model.learn(["a", f"b{k}"], T0)
    ids = model.score(["a"], T0, n=10)[0]
    assert ids == ["b0", "b1", "b2"]
    assert model.stats()["transitions"] == 3


def _traced(model: OnlineModel, calls: list[tuple[list[int], float]]) -> int:
    """Bytes tracemalloc sees the model gain while it learns `calls`; the ids it keeps are
    made while tracing, as in the service, and so counted."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for clicks, t in calls:
            model.learn(fresh_ids(clicks), t)
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("w_knn", [0.0, 0.25])
def test_memory_estimate_is_within_a_quarter_of_tracemalloc(w_knn: float):
    model = OnlineModel(replace(OnlineConfig(), w_knn=w_knn))
    empty = model.memory_bytes()
    traced = _traced(model, random_stream(6000, 20_000, seed=4))
    assert model.stats()["transitions"] > 10_000
    assert abs((model.memory_bytes() - empty) / traced - 1) < 0.25


def test_memory_stays_under_the_bound_of_the_caps():
    cfg = replace(OnlineConfig(), max_items=500, max_transitions=2000, max_sessions=300, w_knn=0.25)
    model = OnlineModel(cfg)
    traced = _traced(model, random_stream(5000, 50_000, seed=5))
    assert model.stats()["items"] == cfg.max_items  # the caps were reached
    assert traced < cfg.bound_bytes() and model.memory_bytes() < cfg.bound_bytes()


def test_documented_bytes_per_item_and_per_transition():
    # OnlineConfig's docstring: 200 bytes per item, 158 more with successors, 43 per transition
    rng = np.random.default_rng(6)
    clicks = [([k], T0) for k in range(20_000)]
    pairs = [([i, int(j)], T0) for i in range(20_000) for j in rng.choice(20_000, 5)]
    model = OnlineModel()
    per_item = _traced(model, clicks) / 20_000
    with_successors = _traced(model, pairs) - 158 * model.stats()["sources"]
    per_transition = with_successors / model.stats()["transitions"]
    assert per_item == pytest.approx(200, rel=0.15)
    assert per_transition == pytest.approx(43, rel=0.15)


# --- configuration and concurrency ---


@pytest.mark.parametrize(
    ("field", "value"),
    [("half_life_s", 0.0), ("max_items", 0), ("knn_k", 0), ("w_knn", -1.0), ("smoothing", -1)],
)
def test_a_bad_setting_is_refused_with_its_name(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        OnlineConfig(**{field: value})  # type: ignore[arg-type]


def test_learn_refuses_an_empty_session():
    with pytest.raises(ValueError, match="clicks"):
        OnlineModel().learn([], T0)


def test_learn_and_score_from_two_threads():
    model = OnlineModel(replace(OnlineConfig(), w_knn=0.25))
    calls = random_stream(500, 300, seed=7)
    errors: list[BaseException] = []

    def scorer() -> None:
        try:
            for numbers, t in calls:
                model.score(fresh_ids(numbers), t, n=20)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    thread = threading.Thread(target=scorer)
    thread.start()
    for numbers, t in calls:
        model.learn(fresh_ids(numbers), t)
    thread.join()
    assert errors == []


def test_source_codes_index_source_names():
    codes = (SOURCE_POPULARITY, SOURCE_TRANSITION, SOURCE_TRANSITION2, SOURCE_KNN)
    assert [SOURCE_NAMES[c] for c in codes] == ["popularity", "transition", "transition2", "knn"]


def test_transition_eviction_drops_only_the_excess_of_equal_weights():
    model = OnlineModel(replace(OnlineConfig(), max_transitions=100, max_items=10_000))
    for k in range(126):  # all at the same moment: every transition weighs the same
        model.learn([f"a{k}"], T0)
        model.learn([f"a{k}", f"b{k}"], T0)
    assert model.stats()["transitions"] == 100


def test_a_model_idle_for_a_year_still_scores_and_learns():
    model = OnlineModel(replace(OnlineConfig(), smoothing=0.0))
    model.learn(["a"], T0)
    model.learn(["a", "b"], T0)
    later = T0 + 365 * 86_400.0
    assert model.score(["a"], later, n=2)[0] == ["b", "a"]
    model.learn(["c"], later)
    assert model.score([], later, n=1)[0] == ["c"]


def test_the_arrays_by_table_index_equal_the_statistics_through_evictions_and_rescaling():
    cfg = replace(OnlineConfig(), max_items=300, half_life_s=60.0)
    model = OnlineModel(cfg)
    for clicks, t in random_stream(2000, 3000, seed=8):
        model.learn(fresh_ids(clicks), t + 300 * clicks[0])  # renormalises on the way
    ids = list(model._pop)
    rows = model.table.find(ids)
    assert (rows >= 0).all() and len(model.table) <= 2 * cfg.max_items
    top = max(model._pop.values())
    assert model.popularity_of(rows).tolist() == [model._pop[j] / top for j in ids]
    assert not np.isnan(model.born_of(rows)).any()
    free = np.setdiff1d(np.arange(len(model.table)), rows)
    assert (model.popularity_of(free) == 0).all() and np.isnan(model.born_of(free)).all()
