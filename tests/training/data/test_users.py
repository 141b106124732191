"""Synthetic users: reproducible, lasting tastes, several sessions over several days; the
UserId column through reading, `split` and the time split."""

import numpy as np
import pandas as pd

from training.__main__ import main
from training.data.logs import DAY, USER, read_events
from training.data.users import Tastes, generate_users, users_to_dir


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
