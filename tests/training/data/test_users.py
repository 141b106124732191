"""Synthetic users: reproducible, lasting tastes, several sessions over several days; the
UserId column through reading, `split` and the time split. Readers of the news log: sessions
go to readers so that the target share of the last day's next clicks comes from returning
readers; a reader's front-page clicks lean to their topics by taste_boost while every story
keeps its share of all clicks; without readers the news log is drawn exactly as before."""

import numpy as np
import pandas as pd
import pytest

from training.__main__ import main
from training.data.logs import DAY, USER, read_events
from training.data.news import START_TIME, NewsProfile, generate_news
from training.data.users import Readers, Tastes, generate_users, returning_share, users_to_dir


def test_the_same_seed_gives_the_same_log_and_every_session_has_one_user():
    a = generate_users(n_users=30, n_items=60, days=5.0, seed=3)
    b = generate_users(n_users=30, n_items=60, days=5.0, seed=3)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert (a.events.groupby("SessionId").UserId.nunique() == 1).all()
    assert a.events.groupby("SessionId").size().min() >= 2


def test_users_return_over_several_days_with_lasting_tastes():
    log = generate_users(n_users=80, n_items=200, days=10.0, seed=0)
    events = log.events
    sessions = events.groupby("SessionId").agg(user=("UserId", "first"), start=("Time", "min"))
    per_user = sessions.groupby("user").start.agg(["size", "min", "max"])
    assert per_user["size"].mean() > 3
    assert ((per_user["max"] - per_user["min"]) > DAY).mean() > 0.7  # back on another day
    category = dict(zip(log.items.ItemId, log.items.category, strict=True))
    liked = {
        u: set(map(int, t.split())) for u, t in zip(log.users.UserId, log.users.tastes, strict=True)
    }
    in_taste = [category[i] in liked[u] for i, u in zip(events.ItemId, events.UserId, strict=True)]
    # a quarter of clicks follow successors anywhere; most others stay in the user's tastes
    assert np.mean(in_taste) > 0.5
    weak = generate_users(n_users=80, n_items=200, days=10.0, tastes=Tastes(p_taste=0.0))
    w_cat = [
        category[i] in liked[u] for i, u in zip(weak.events.ItemId, weak.events.UserId, strict=True)
    ]
    assert np.mean(w_cat) < np.mean(in_taste) - 0.2


def test_split_keeps_the_user_column_and_each_users_test_sessions_after_their_training(tmp_path):
    paths = users_to_dir(tmp_path / "d", test_days=2.0, n_users=40, n_items=80, days=8.0)
    main(["split", "--input", str(paths["events"]), "--out", str(tmp_path / "s"),
          "--test-days", "2", "--min-item-support", "1"])  # fmt: skip
    train = read_events(tmp_path / "s" / "train.tsv", user_key=USER)
    test = read_events(tmp_path / "s" / "test.tsv", user_key=USER)
    assert USER in train.columns and USER in test.columns
    last_train = train.groupby(USER).Time.max()
    first_test_end = test.groupby(["UserId", "SessionId"]).Time.max().groupby(level=0).min()
    both = last_train.index.intersection(first_test_end.index)
    assert len(both) > 0 and (last_train[both] <= first_test_end[both]).all()
    assert USER not in read_events(tmp_path / "s" / "train.tsv").columns  # users are optional


def test_an_entry_click_hides_the_intent_at_the_start_of_a_session():
    """One taste, always the intent, no favourites: every first click is in the user's
    category, unless the session opens on an entry click (a popular item anywhere)."""
    one = dict(n_tastes=1, p_taste=1.0, p_favourite=0.0)
    first_in_taste = {}
    for p_entry in (0.0, 1.0):
        log = generate_users(n_users=60, n_items=200, days=5.0, seed=1,
                             tastes=Tastes(p_entry=p_entry, **one))  # fmt: skip
        category = dict(zip(log.items.ItemId, log.items.category, strict=True))
        liked = dict(zip(log.users.UserId, log.users.tastes.astype(int), strict=True))
        first = log.events.sort_values("Time").groupby("SessionId").first()
        first_in_taste[p_entry] = np.mean(
            [category[i] == liked[u] for i, u in zip(first.ItemId, first.UserId, strict=True)]
        )
    assert first_in_taste[0.0] == 1.0
    assert first_in_taste[1.0] < 0.3


# --- readers of the news log ---
SCALE, DAYS = 0.1, 4
PROFILE = NewsProfile(n_topics=150)  # 15 topics at this scale


def _log(readers: Readers | None, seed: int = 0):
    return generate_news(PROFILE, days=DAYS, seed=seed, scale=SCALE, readers=readers)


def _share_from_events(events: pd.DataFrame) -> float:
    sessions = events.groupby("SessionId").agg(t=("Time", "min"), n=("Time", "size"),
                                               user=("UserId", "first"))  # fmt: skip
    sessions["day"] = ((sessions.t - START_TIME) // DAY).astype(int)
    first = sessions.groupby("user").day.min()
    returning = first.loc[sessions.user].to_numpy() < sessions.day.to_numpy()
    last = (sessions.day == sessions.day.max()).to_numpy()
    nxt = sessions.n.to_numpy() - 1
    return nxt[last & returning].sum() / nxt[last].sum()


def test_returning_share_on_a_hand_made_case():
    # reader 0: days 0 and 2; reader 1: day 2 only; reader 2: day 1 and 2
    reader = np.array([0, 0, 1, 2, 2])
    day_of = np.array([0, 2, 2, 1, 2])
    lengths = np.array([3, 4, 2, 5, 6])  # next clicks 2, 3, 1, 4, 5
    # last day (2): 3 + 1 + 5 next clicks, of which readers 0 and 2 (returning) 3 + 5
    assert returning_share(reader, day_of, lengths) == pytest.approx(8 / 9)


def test_readers_get_the_returning_share_and_one_reader_a_session():
    log = _log(Readers(returning_share=0.86))
    events = log.events
    assert events.groupby("SessionId").UserId.nunique().max() == 1
    assert abs(_share_from_events(events) - 0.86) < 0.02
    fewer = _share_from_events(_log(Readers(returning_share=0.6)).events)
    assert abs(fewer - 0.6) < 0.02
    assert set(events.UserId) <= set(log.reader_topics)


def _in_reader_topics(log) -> float:
    topic = dict(zip(log.item_ids, log.topic, strict=True))
    clicked = log.events.ItemId.map(topic).to_numpy()
    liked = [log.reader_topics[u] for u in log.events.UserId]
    return float(np.mean([t in mine for t, mine in zip(clicked, liked, strict=True)]))


def test_readers_lean_to_their_topics_and_stories_keep_their_share():
    plain = _log(None).events
    leaning, neutral = _log(Readers(taste_boost=4.0)), _log(Readers(taste_boost=1.0))
    n_topics = int(leaning.topic.max()) + 1
    chance = 2 / n_topics
    assert abs(_in_reader_topics(neutral) - chance) < 0.3 * chance
    assert _in_reader_topics(leaning) > 2 * chance

    # every story's expected share of clicks is kept: the day's biggest stories hold about
    # the same share with readers as without (topic draws alone would flatten it)
    def top_share(events, k=20):
        day = ((events.Time - START_TIME) // DAY).astype(int)
        shares = [g.ItemId.value_counts().iloc[:k].sum() / len(g) for _, g in events.groupby(day)]
        return float(np.mean(shares))

    assert top_share(leaning.events) == pytest.approx(top_share(plain), rel=0.1)


def test_without_readers_the_log_is_drawn_as_before():
    plain = _log(None, seed=3)
    assert plain.reader_topics is None and "UserId" not in plain.events
    with_readers = _log(Readers(), seed=3)
    # the readers draw from their own generator: the session starts are the same
    starts = plain.events.groupby("SessionId").Time.min()
    assert starts.equals(with_readers.events.groupby("SessionId").Time.min())


def test_bad_readers_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="returning_share"):
        Readers(returning_share=1.0)
    with pytest.raises(ValueError, match="taste_boost"):
        Readers(taste_boost=0.5)
