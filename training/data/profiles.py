"""Named data profiles: click logs shaped like a real news portal's or a real shop's.

    python -m training generate --profile news --out data/news [--days 6 --seed 0 --scale 1]
    python -m training generate --profile news-readers --out data/news_readers   # + UserId
    python -m training generate --profile shop --out data/shop

    events = generate_profile("news", days=6, seed=0, scale=0.1)   # SessionId, ItemId, Time

news: training.data.news with its defaults (~180,000 clicks a day at scale 1; the statistics of
the real portal's log within about 20%: training.data.profile_stats, scripts/profile_stats.py).
news-readers: the same log with a UserId column: readers who come back over the days with
lasting topics (training.data.users.Readers, its defaults), for HRNN and `evaluate --history`.
shop: the churn generator (training.data.synthetic + training.data.churn) with ShopProfile's
settings, slower churn and longer sessions than news, and then reloads: every click may be
followed by copies of itself (a second look, a reload), which is what makes a quarter of
an e-commerce log's next clicks repeat the last one.

Files (profile_to_dir): events.tsv (every click), items.tsv (the latent truth), and the
split by the day a session starts in: train.tsv (sessions starting before the last
`test_days` days) and test.tsv (the rest). Nothing is filtered, unlike
synthetic.generate_to_dir: an online replay counts every next click, including those on
items the history never saw (as scripts/bench_churn.py does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .churn import Churn
from .news import START_TIME as NEWS_START
from .news import NewsProfile, generate_news
from .synthetic import DAY, START_TIME, generate
from .users import Readers

PROFILES = ("news", "shop")  # the real logs' shapes, which the benchmarks run through
GENERATED = (*PROFILES, "news-readers")  # what generate --profile accepts


@dataclass(frozen=True)
class ShopProfile:
    """An e-commerce shape from the churn generator; counts at scale 1."""

    stock_items: int = 8_000  # products on sale from the start
    new_items_per_day: float = 150.0  # slower churn than news' thousands a day
    sessions_per_day: float = 10_000.0
    n_categories: int = 40
    mean_length: float = 7.0  # before reloads; ~9 clicks with them, news has 2.68
    half_life_hours: float = 72.0  # a product stays interesting for days, a story for hours
    stock_share: float = 0.6  # most clicks go to the catalogue, not to what is new
    # no deliberate revisits: the popularity skew alone has ~20% of next clicks on a
    # product already clicked in the session (7% on the last one) before the reloads
    p_repeat: float = 0.0
    # a click is followed by a copy of itself with this probability, again and again
    # (a geometric number of copies): then 36% of next clicks repeat a product of the
    # session and 26% the last click (the e-commerce log: 34% and 26%)
    p_reload: float = 0.2
    reload_gap_seconds: float = 20.0  # mean gap before a copy, on top of 2 s


def generate_profile(name: str, days: float = 6.0, seed: int = 0, scale: float = 1.0):
    """Events (SessionId, ItemId, Time, and UserId for news-readers) of profile `name`.

    scale multiplies the clicks and the items (at least 2 of each). Returns
    (events, items frame, log start (Unix s)). Raises ValueError for an unknown name."""
    if name in ("news", "news-readers"):
        readers = Readers() if name == "news-readers" else None
        log = generate_news(NewsProfile(), days=days, seed=seed, scale=scale, readers=readers)
        items = pd.DataFrame(
            {
                "ItemId": log.item_ids,
                "release": log.release,
                "life_hours": log.life / 3600.0,
                "mass": log.mass,
                "topic": log.topic,
            }
        )
        return log.events, items, NEWS_START
    if name == "shop":
        events, items = generate_shop(ShopProfile(), days, seed, scale)
        return events, items, START_TIME
    raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(GENERATED)}")


def generate_shop(
    profile: ShopProfile, days: float = 6.0, seed: int = 0, scale: float = 1.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items frame): the churn generator with `profile`'s settings, then reloads."""
    churn = Churn(
        new_items_per_day=profile.new_items_per_day * scale,
        stock_share=profile.stock_share,
        half_life_hours=profile.half_life_hours,
        p_repeat=profile.p_repeat,
    )
    cat = generate(
        n_items=max(int(round(profile.stock_items * scale)), 2),
        n_sessions=max(int(round(profile.sessions_per_day * scale * days)), 1),
        n_categories=profile.n_categories,
        days=days,
        seed=seed,
        mean_length=profile.mean_length,
        churn=churn,
    )
    rng = np.random.default_rng([seed, 1])  # its own stream: the churned clicks stay as drawn
    return add_reloads(rng, cat.events, profile.p_reload, profile.reload_gap_seconds), (
        cat.items_frame()
    )


def add_reloads(
    rng: np.random.Generator, events: pd.DataFrame, p_reload: float, mean_gap: float
) -> pd.DataFrame:
    """Every click followed by k copies of itself, P(k) = (1 - p) p**k; a copy comes
    2 s + exponential(mean_gap) after the click before it, and the session's later clicks
    move by as much. events: session by session, in time order (as generate() gives)."""
    copies = rng.geometric(1.0 - p_reload, len(events)) - 1
    rows = np.repeat(np.arange(len(events)), 1 + copies)
    group_start = np.repeat(np.cumsum(1 + copies) - (1 + copies), 1 + copies)
    is_copy = np.arange(len(rows)) > group_start
    added = np.where(is_copy, 2.0 + rng.exponential(mean_gap, len(rows)), 0.0)
    session = events["SessionId"].to_numpy()[rows]
    first = np.concatenate([[True], session[1:] != session[:-1]])
    cum = np.cumsum(added)
    before = np.concatenate([[0.0], cum[:-1]])
    session_first = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    shift = cum - before[session_first]  # copies' time added since the session began
    return pd.DataFrame(
        {
            "SessionId": session,
            "ItemId": events["ItemId"].to_numpy()[rows],
            "Time": events["Time"].to_numpy()[rows] + shift,
        }
    )


def split_by_start(events: pd.DataFrame, cutoff: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, test): sessions starting before `cutoff` (Unix s), and the rest; every
    click kept, in the given order."""
    start = events.groupby("SessionId")["Time"].transform("min").to_numpy()
    is_test = start >= cutoff
    history, test = events[~is_test], events[is_test]
    return history.reset_index(drop=True), test.reset_index(drop=True)


def profile_to_dir(
    out_dir: str | Path,
    name: str,
    days: float = 6.0,
    seed: int = 0,
    scale: float = 1.0,
    test_days: float = 1.0,
) -> dict[str, Path]:
    """Generate profile `name` and write events.tsv, items.tsv, train.tsv and test.tsv
    (see the module docstring); returns the paths by name. Raises ValueError when
    test_days leaves no history (test_days >= days)."""
    from .logs import write_events

    if not 0 < test_days < days:
        raise ValueError(f"test_days={test_days} must be in (0, days={days})")
    events, items, start = generate_profile(name, days, seed, scale)
    history, test = split_by_start(events, start + (days - test_days) * DAY)
    out = Path(out_dir)
    paths = {name: out / f"{name}.tsv" for name in ("events", "items", "train", "test")}
    write_events(events, paths["events"])
    items.to_csv(paths["items"], sep="\t", index=False)
    write_events(history, paths["train"])
    write_events(test, paths["test"])
    return paths
