"""training.data.profiles, training.data.news and training.data.profile_stats: the news
profile's statistics match the real portal's at its size (as scripts/profile_stats.py
checks them), no story is read twice in a session, the shop profile repeats like an
e-commerce log, the same seed gives the same data, the files hold every click, and the
statistics agree with a hand count on a tiny log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.__main__ import main
from training.data.news import START_TIME, NewsProfile, generate_news
from training.data.profile_stats import (
    COUNT_ROWS,
    NEWS_TARGETS,
    SHOP_TARGETS,
    compare,
    profile_statistics,
)
from training.data.profiles import ShopProfile, add_reloads, generate_profile, generate_shop

# the real log's size: smaller runs have fewer stories live at a time, which shifts the
# top-k shares and the youngest ages; 180,000 clicks a day for 6 days, ~10 s
SCALE = 1.0
TOP = (20, 100)


@pytest.fixture(scope="module")
def news() -> pd.DataFrame:
    return generate_news(NewsProfile(), days=6, seed=0, scale=SCALE).events


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    return generate_shop(ShopProfile(), days=4, seed=0, scale=0.2)[0]


def test_news_statistics_are_within_20_percent_of_the_real_log(news):
    stats = profile_statistics(news, top=TOP)
    targets = {k: v * SCALE if k in COUNT_ROWS else v for k, v in NEWS_TARGETS.items()}
    rows = compare({k: stats[k] for k in targets}, targets)
    off = [(r["statistic"], r["target"], r["generated"]) for r in rows if not r["within_20pct"]]
    assert off == []


def test_news_sessions_never_click_a_story_twice_and_no_click_precedes_its_release():
    log = generate_news(NewsProfile(), days=2, seed=4, scale=0.05)
    assert not log.events.duplicated(["SessionId", "ItemId"]).any()
    index = log.events.ItemId.str[1:].astype(int).to_numpy()
    assert (log.events.Time.to_numpy() > log.release[index]).all()
    assert log.events.groupby("SessionId").size().min() >= 2


def test_news_clicks_follow_related_links_far_more_than_chance():
    log = generate_news(NewsProfile(), days=2, seed=1, scale=0.05)
    items = log.events.ItemId.str[1:].astype(int).to_numpy()
    sessions = log.events.SessionId.to_numpy()
    same = sessions[1:] == sessions[:-1]
    prev, nxt = items[:-1][same], items[1:][same]
    followed = (log.related[prev] == nxt[:, None]).any(axis=1).mean()
    assert followed > 0.15  # by chance: 5 links among thousands of stories


def test_shop_repeats_items_within_sessions_like_the_e_commerce_log(shop):
    stats = profile_statistics(shop)
    rows = compare({k: stats[k] for k in SHOP_TARGETS}, SHOP_TARGETS)
    assert all(r["within_20pct"] for r in rows), rows
    assert stats["session length mean"] > 2 * NEWS_TARGETS["session length mean"]


def test_the_same_seed_gives_the_same_data_and_another_seed_does_not():
    a, b, c = (generate_profile("news", 2, seed, 0.03)[0] for seed in (5, 5, 6))
    pd.testing.assert_frame_equal(a, b)
    assert not a.ItemId.equals(c.ItemId)
    d, e = (generate_profile("shop", 2, 5, 0.05)[0] for _ in range(2))
    pd.testing.assert_frame_equal(d, e)


def test_reloads_copy_clicks_in_place_and_keep_time_order_inside_sessions():
    events = pd.DataFrame(
        {"SessionId": ["a", "a", "b"], "ItemId": ["x", "y", "z"], "Time": [0.0, 10.0, 5.0]}
    )
    out = add_reloads(np.random.default_rng(0), events, 0.6, 20.0)
    assert len(out) > len(events)
    collapsed = out[out.ItemId.ne(out.ItemId.shift()) | out.SessionId.ne(out.SessionId.shift())]
    assert collapsed.ItemId.tolist() == ["x", "y", "z"]  # copies sit right after their click
    for _, times in out.groupby("SessionId").Time:
        assert (np.diff(times.to_numpy()) > 0).all()


def test_cli_profile_writes_every_click_split_by_session_start_day(tmp_path, capsys):
    main(["generate", "--profile", "news", "--out", str(tmp_path), "--days", "3",
          "--scale", "0.03", "--seed", "2"])  # fmt: skip
    read = {n: pd.read_csv(tmp_path / f"{n}.tsv", sep="\t", dtype=str) for n in
            ("events", "train", "test")}  # fmt: skip
    assert len(read["train"]) + len(read["test"]) == len(read["events"])
    test = read["test"].assign(Time=lambda f: f.Time.astype(float))
    assert test.groupby("SessionId").Time.min().min() >= START_TIME + 2 * 86_400
    assert not set(read["test"].ItemId) <= set(read["train"].ItemId)  # unseen items kept
    assert "of next clicks on items unseen before" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--profile", "shop", "--out", str(tmp_path), "--churn"])


def test_cli_news_readers_profile_writes_whose_session_it_is(tmp_path):
    """The same news log with a UserId column that the HRNN commands read (--user-key)."""
    main(["generate", "--profile", "news-readers", "--out", str(tmp_path), "--days", "3",
          "--scale", "0.03", "--seed", "2"])  # fmt: skip
    train = pd.read_csv(tmp_path / "train.tsv", sep="\t", dtype=str)
    test = pd.read_csv(tmp_path / "test.tsv", sep="\t", dtype=str)
    assert list(train.columns) == ["SessionId", "ItemId", "Time", "UserId"]
    assert train.groupby("SessionId").UserId.nunique().max() == 1
    assert set(test.UserId) & set(train.UserId)  # readers come back on the test day


def _tiny_log() -> pd.DataFrame:
    day = 86_400.0
    rows = [  # (session, item, seconds from a midnight); hand counts in the test below
        ("s1", "a", 3_600.0), ("s1", "b", 3_630.0), ("s1", "a", 3_700.0),
        ("s2", "b", 7_200.0), ("s2", "b", 7_210.0),
        ("s3", "c", day + 3_600.0), ("s3", "a", day + 3_660.0), ("s3", "d", day + 3_760.0),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    frame["Time"] += START_TIME  # a midnight
    return frame


def test_statistics_match_a_hand_count_on_a_tiny_log():
    stats = profile_statistics(_tiny_log(), top=(1, 2))
    assert stats["clicks a day"] == 4.0  # 5 on day 0, 3 on day 1: median 4
    assert stats["distinct items clicked in a day"] == 2.5  # {a, b}, {a, c, d}
    assert np.isnan(stats["distinct items clicked in 5 days"])  # a 2-day log
    assert stats["new items a day (2,000-4,000)"] == 2.0  # c, d first seen on day 1
    assert stats["session length median"] == 3.0 and stats["session length mean"] == 8 / 3
    # next clicks: s1 b, a(repeat, not last); s2 b(repeat, the last); s3 a, d
    assert stats["next click repeats an item of the session"] == pytest.approx(2 / 5)
    assert stats["next click repeats the last click"] == pytest.approx(1 / 5)
    # day-1 next clicks a (first seen day 0), d (new): one of two
    assert stats["next-click targets first seen that day"] == pytest.approx(0.5)
    # ages (s) of the 8 clicks since the item's first: a 0, 100, 86,460; b 0, 3,570,
    # 3,580; c 0; d 0
    ages = np.array([0, 100, 86_460, 0, 3_570, 3_580, 0, 0]) / 3_600
    assert stats["item age at click p50 (h)"] == pytest.approx(np.percentile(ages, 50))
    assert np.isnan(stats["item's clicks within 1 h of its first (median item)"])  # < 20 clicks
    # day 0: a 2, b 3 -> top-1 3/5; day 1: 1/3 each -> 1/3; median over the days
    assert stats["top-20 items' share of a day's clicks"] == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert stats["seconds between clicks median"] == 60.0  # 30, 70, 10, 60, 100
    assert stats["busiest hour's share of a day's clicks"] == pytest.approx(6 / 8)  # 01:xx
    assert stats["quietest hour's share of a day's clicks"] == 0.0


def test_compare_marks_rows_and_needs_exact_zero_targets():
    rows = compare({"x": 1.1, "y": 0.01, "z": 5.0}, {"x": 1.0, "y": 0.0})
    assert [r["within_20pct"] for r in rows] == [True, False, None]
    assert rows[0]["relative_difference"] == pytest.approx(0.1)
    assert rows[1]["relative_difference"] is None and rows[2]["target"] is None
