"""The online baselines against answers worked out by hand on tiny click streams, and their
replay through service.tools.replay's walk (the command line's --baseline included)."""

from __future__ import annotations

import json

import pytest

from service.tools.online_baselines import (
    BASELINES,
    Cooccurrence,
    DecayedCooccurrence,
    LastHourPopularity,
    SessionKNN,
)
from service.tools.replay import Click, main, replay_baseline

H = 3600.0


def feed(baseline, stream: list[tuple[str, str, float]]) -> None:
    """learn() every (session, item, time) in order, each with its session's clicks so far."""
    sessions: dict[str, list[str]] = {}
    for session, item, t in stream:
        clicks = sessions.setdefault(session, [])
        clicks.append(item)
        baseline.learn(session, list(clicks), t)


def test_last_hour_popularity_counts_the_clicks_of_the_last_hour_only():
    pop = LastHourPopularity()
    feed(pop, [("s1", "a", 0.0), ("s2", "b", 10.0), ("s3", "b", 20.0), ("s4", "c", 30.0)])
    # at 600 s: b twice, then a and c once each (ties: the smaller id first)
    assert pop.recommend("q", [], 600.0, 3) == ["b", "a", "c"]
    # at 3605 s the click on a (0 s) has left the window; at 3615 s the first on b too
    assert pop.recommend("q", [], 3605.0, 3) == ["b", "c"]
    assert pop.recommend("q", [], 3615.0, 3) == ["b", "c"]  # b and c once each: by id
    assert pop.recommend("q", [], 3620.0, 3) == ["c"]


def test_cooccurrence_ranks_the_last_clicks_successors_by_count_then_popularity():
    co = Cooccurrence()
    stream = [("s1", "a", 1.0), ("s1", "b", 2.0), ("s2", "a", 3.0), ("s2", "c", 4.0)]
    stream += [("s3", "a", 5.0), ("s3", "b", 6.0), ("s4", "d", 7.0)]
    feed(co, stream)
    # a -> b twice, a -> c once; then the last hour's counts: a 3, b 2, c 1, d 1
    assert co.recommend("q", ["x", "a"], 10.0, 4) == ["b", "c", "a", "d"]
    assert co.recommend("q", ["d"], 10.0, 3) == ["a", "b", "c"]  # d has no successor


def test_decayed_cooccurrence_halves_per_hour_adds_the_click_before_last_and_skips_the_last():
    dc = DecayedCooccurrence()
    stream = [("s1", "a", 0.0), ("s1", "b", 0.0)]  # a -> b, an hour before the question
    stream += [("s2", "a", H), ("s2", "c", H)]  # a -> c
    stream += [("s3", "d", H), ("s3", "x", H)]  # d -> x
    stream += [("s4", "a", H), ("s4", "a", H)]  # a -> a: never proposed after a
    feed(dc, stream)
    # at 1 h: T(a, c) = 1, T(a, b) = 0.5, 0.3 T(d, x) = 0.3 (T(a, a) = 1 skipped); then the
    # last hour (after 0 s): a 3 (skipped), c, d, x once each
    assert dc.recommend("q", ["d", "a"], H, 4) == ["c", "b", "x", "d"]
    # an hour later the same three halve together: the order stands
    assert dc.recommend("q", ["d", "a"], 2 * H, 3) == ["c", "b", "x"]
    second = DecayedCooccurrence(second_weight=0.6)
    feed(second, stream)
    assert second.recommend("q", ["d", "a"], H, 3) == ["c", "x", "b"]  # 0.6 > 0.5


def test_session_knn_votes_with_similarity_weighted_by_recency_of_the_shared_click():
    knn = SessionKNN()
    stream = [("s1", "a", 1.0), ("s1", "b", 2.0), ("s1", "c", 3.0)]
    stream += [("s2", "b", 4.0), ("s2", "d", 5.0), ("s3", "e", 6.0)]
    feed(knn, stream)
    # q = [a, d]: d (weight 1) shared with s2, a (weight 1/2) with s1. Votes: b 1 + 1/2,
    # a 1/2, c 1/2, d skipped (the last click); then popularity without d: b, a, c, e
    assert knn.neighbours("q", ["a", "d"]) == {"s2": 1.0, "s1": 0.5}
    assert knn.recommend("q", ["a", "d"], 10.0, 4) == ["b", "a", "c", "e"]
    one = SessionKNN(k=1)  # s2 alone votes: b, then popularity without d
    feed(one, stream)
    assert one.recommend("q", ["a", "d"], 10.0, 3) == ["b", "a", "c"]


def test_a_session_is_not_its_own_neighbour():
    knn = SessionKNN()
    feed(knn, [("s1", "a", 1.0), ("s1", "b", 2.0)])
    assert knn.neighbours("s1", ["a", "b"]) == {}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_is_replayed_by_the_services_walk(name: str):
    history = [Click("h", "a", 1.0), Click("h", "b", 2.0)]
    test = [Click("q", "a", 10.0), Click("q", "b", 11.0), Click("q", "c", 12.0)]
    figures = replay_baseline(BASELINES[name](), history, test, cutoffs=(1, 20))
    assert figures["n_predictions"] == 2
    assert 0.0 <= figures["mrr@20"] <= figures["recall@20"] <= 1.0


def test_the_decayed_cooccurrence_replay_scores_what_its_answers_rank():
    """a -> b learnt in the history: the call after a ranks b first (a hit at rank 1); the
    call after b knows no successor and offers the last hour's a (c missed)."""
    history = [Click("h", "a", 1.0), Click("h", "b", 2.0)]
    test = [Click("q", "a", 10.0), Click("q", "b", 11.0), Click("q", "c", 12.0)]
    figures = replay_baseline(DecayedCooccurrence(), history, test, cutoffs=(20,))
    assert figures["recall@20"] == 0.5 and figures["mrr@20"] == 0.5


def test_the_command_line_replays_a_baseline_without_a_model(tmp_path, capsys):
    log = tmp_path / "test.tsv"
    log.write_text("SessionId\tItemId\tTime\nh\ta\t1\nh\tb\t2\nq\ta\t10\nq\tb\t11\n")
    out = tmp_path / "figures.json"
    args = ["--baseline", "cooccurrence", "--test", str(log), "--json", str(out)]
    assert main(args) == 0
    figures = json.loads(out.read_text())
    assert figures["settings"] == {"baseline": "cooccurrence"}
    # h's call after a knows no successor (offers a: b missed); q's after a offers b
    assert figures["recall@20"] == 0.5
