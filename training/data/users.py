"""Synthetic users with lasting tastes, who come back over several days for several sessions:
data on which personalisation (HRNN, the user baselines) has something to find. Two kinds:
users of the synthetic catalogue (generate_users, below) and readers of the news log
(Readers, at the end of the module).

    log = generate_users(n_users=2000, n_items=2000, seed=0)
    log.events          # SessionId, ItemId, Time (Unix s), UserId
    users_to_dir("data/users")    # events.tsv, items.tsv, users.tsv, train.tsv, test.tsv
    python -m training.data.users --out data/users

The catalogue (categories, Zipf-like popularity, each item's likely successors) is
synthetic.generate's, so sessions keep its sequential structure. On top of it:
  * every user has `n_tastes` favourite categories (drawn by category weight) and
    `n_favourites` favourite items inside them (by popularity);
  * a user has 1 + Poisson(sessions_per_user - 1) sessions, starting uniformly over `days`;
  * a session's intent is one of the user's tastes with probability `p_taste`, else any
    category; it switches with probability `p_switch` per click, again mostly to a taste;
  * a click is, with probability `p_follow`, a successor of the previous click; else, with
    `p_intent`, an item of the intent category (a favourite with `p_favourite`); else any
    popular item. The first click is an intent item (or a favourite, as above), except that
    with probability `p_entry` the session opens on an entry click: a popular item of any
    category (a landing page, a promotion), after which the intent shows.
A session-only model sees the current session; a user model also sees the tastes and
favourites, which hold across days: that difference is what the returning-user figures show.

How much the history can add depends on how much the session itself already shows. With the
defaults the first click is an intent item, so a session model knows the intent after one
click, and the favourites are popular items of their categories, which it ranks high anyway:
knowing each user's true favourites (an oracle bonus on GRU4Rec's scores, the best of a few
sizes) lifts Recall@20 by about 8% and MRR@20 by about 7%, and a learned user model gets a
fraction of that. HRNN's user state is a summary of the sessions' final states (their
intent, the last items), not a list of the items a user clicked, so it carries a taste much
better than a handful of favourite items. `p_entry` hides the intent from the session's start:
Tastes(p_entry=1.0, n_tastes=1, p_taste=1.0, p_follow=0.0, p_intent=1.0, p_switch=0.0,
p_favourite=0.0) is the case where only the history tells what a session is after
(scripts/compare_users.py --tastes ...).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .logs import preprocess, split_by_time, write_events
from .synthetic import DAY, START_TIME, generate


@dataclass(frozen=True)
class Tastes:
    """How users behave; the defaults give strong, lasting tastes."""

    n_tastes: int = 2  # favourite categories per user (of n_categories)
    n_favourites: int = 5  # favourite items per user, inside the favourite categories
    sessions_per_user: float = 6.0  # mean sessions of a user over the whole log
    p_taste: float = 0.85  # a session's (or a switch's) intent is one of the user's tastes
    p_favourite: float = 0.3  # an intent click is one of the user's favourite items
    p_follow: float = 0.45  # a click follows the previous one (a catalogue successor)
    p_intent: float = 0.4  # a click is an item of the intent category
    p_switch: float = 0.1  # the intent changes after a click
    mean_length: float = 6.0  # clicks per session, 2 + geometric
    p_entry: float = 0.0  # a session opens on a popular item of any category (not its intent)


@dataclass
class UserLog:
    events: pd.DataFrame  # SessionId, ItemId, Time, UserId; sessions in start order
    items: pd.DataFrame  # ItemId, category, popularity
    users: pd.DataFrame  # UserId, tastes (space-separated categories), favourites (item ids)


class _ByCategory:
    """Popularity-weighted draws of an item of a given category."""

    def __init__(self, category: np.ndarray, popularity: np.ndarray, n_categories: int):
        self.members = [np.flatnonzero(category == c) for c in range(n_categories)]
        self.cdf = [np.cumsum(popularity[m]) / popularity[m].sum() for m in self.members]
        weight = np.bincount(category, weights=popularity, minlength=n_categories)
        self.weight = weight / weight.sum()

    def item(self, rng: np.random.Generator, c: int) -> int:
        at = np.searchsorted(self.cdf[c], rng.random(), side="right")
        return int(self.members[c][min(at, len(self.members[c]) - 1)])

    def category(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.weight), p=self.weight))


def generate_users(
    n_users: int = 2000,
    n_items: int = 2000,
    n_categories: int = 40,
    days: float = 14.0,
    seed: int = 0,
    tastes: Tastes = Tastes(),
) -> UserLog:
    """Draw the catalogue, the users and their sessions (see the module docstring). The same
    seed gives the same log. Raises ValueError for sizes that make no sense."""
    if n_users < 1 or tastes.n_tastes < 1 or tastes.n_tastes > n_categories:
        raise ValueError("need n_users >= 1 and 1 <= n_tastes <= n_categories")
    if not 0.0 <= tastes.p_entry <= 1.0:
        raise ValueError(f"p_entry={tastes.p_entry} must be a probability")
    cat = generate(n_items=n_items, n_sessions=1, n_categories=n_categories, days=days, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sampler = _ByCategory(cat.item_category, cat.item_popularity, n_categories)
    live = np.flatnonzero(sampler.weight > 0)
    rows, profiles = [], []
    for u in range(n_users):
        liked = rng.choice(live, size=tastes.n_tastes, replace=False, p=_norm(sampler.weight[live]))
        favourites = [sampler.item(rng, int(rng.choice(liked))) for _ in range(tastes.n_favourites)]
        profiles.append((liked, favourites))
        n_sessions = 1 + rng.poisson(tastes.sessions_per_user - 1.0)
        for start in np.sort(START_TIME + rng.random(n_sessions) * days * DAY):
            clicks = _session(rng, sampler, cat.successors, liked, favourites, tastes)
            gaps = np.r_[0.0, 5.0 + rng.exponential(55.0, len(clicks) - 1)]
            rows.append((u, start, clicks, start + np.cumsum(gaps)))
    return _frames(rows, profiles, cat.item_ids, cat.item_category, cat.item_popularity)


def _norm(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def _session(rng, sampler: _ByCategory, successors, liked, favourites, tastes: Tastes):
    """One session's item indices."""

    def pick_intent() -> int:
        return int(rng.choice(liked)) if rng.random() < tastes.p_taste else sampler.category(rng)

    def intent_item(c: int) -> int:
        if rng.random() < tastes.p_favourite:
            return int(favourites[rng.integers(len(favourites))])
        return sampler.item(rng, c)

    length = 1 + rng.geometric(1.0 / (tastes.mean_length - 1.0))  # at least 2
    intent = pick_intent()
    # no draw at p_entry=0, so the defaults give the same log as before p_entry existed
    entry = tastes.p_entry > 0 and rng.random() < tastes.p_entry
    clicks = [sampler.item(rng, sampler.category(rng)) if entry else intent_item(intent)]
    while len(clicks) < min(length, 50):
        u = rng.random()
        if u < tastes.p_follow:
            clicks.append(int(successors[clicks[-1], rng.integers(successors.shape[1])]))
        elif u < tastes.p_follow + tastes.p_intent:
            clicks.append(intent_item(intent))
        else:
            clicks.append(sampler.item(rng, sampler.category(rng)))
        if rng.random() < tastes.p_switch:
            intent = pick_intent()
    return np.asarray(clicks, dtype=np.int64)


def _frames(rows, profiles, item_ids, category, popularity) -> UserLog:
    rows.sort(key=lambda r: r[1])  # session ids in start order, as synthetic.generate's
    width_s, width_u = len(str(len(rows) - 1)), len(str(len(profiles) - 1))
    lengths = [len(r[2]) for r in rows]
    events = pd.DataFrame(
        {
            "SessionId": np.repeat([f"s{i:0{width_s}d}" for i in range(len(rows))], lengths),
            "ItemId": item_ids[np.concatenate([r[2] for r in rows])],
            "Time": np.concatenate([r[3] for r in rows]),
            "UserId": np.repeat([f"u{r[0]:0{width_u}d}" for r in rows], lengths),
        }
    )
    users = pd.DataFrame(
        {
            "UserId": [f"u{u:0{width_u}d}" for u in range(len(profiles))],
            "tastes": [" ".join(map(str, liked)) for liked, _ in profiles],
            "favourites": [" ".join(item_ids[f]) for _, f in profiles],
        }
    )
    items = pd.DataFrame({"ItemId": item_ids, "category": category, "popularity": popularity})
    return UserLog(events, items, users)


def users_to_dir(out_dir: str | Path, test_days: float = 2.0, **kwargs) -> dict[str, Path]:
    """generate_users(**kwargs), then write events.tsv, items.tsv, users.tsv and, after the
    GRU4Rec preprocessing and the time split (sessions ending in the last `test_days` days
    are the test set), train.tsv and test.tsv, all with the UserId column."""
    log = generate_users(**kwargs)
    out = Path(out_dir)
    paths = {name: out / f"{name}.tsv" for name in ("events", "items", "users", "train", "test")}
    write_events(log.events, paths["events"])
    log.items.to_csv(paths["items"], sep="\t", index=False)
    log.users.to_csv(paths["users"], sep="\t", index=False)
    train, test = split_by_time(preprocess(log.events), test_days)
    write_events(train, paths["train"])
    write_events(test, paths["test"])
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.data.users", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--days", type=float, default=14.0)
    p.add_argument("--test-days", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    users_to_dir(args.out, args.test_days, n_users=args.users, n_items=args.items,
                 days=args.days, seed=args.seed)  # fmt: skip
    print(f"wrote {args.out}/events.tsv, items.tsv, users.tsv, train.tsv, test.tsv")


if __name__ == "__main__":
    main()


# --- readers of the news log ---------------------------------------------------------------
#
# Readers for the news log (news.generate_news(readers=Readers())): who reads each session,
# and the topics a reader keeps coming back for.
#
#     log = generate_news(NewsProfile(), days=6, scale=0.25, readers=Readers())
#     log.events.UserId       # u0042 ...; log.reader_topics["u0042"] -> array([3, 17])
#
# Each reader has an activity drawn from a gamma distribution of shape `activity_shape` (a few
# read every day, most now and then) and `n_tastes` topics, drawn uniformly. Sessions go to
# readers in proportion to their activity, as many readers as it takes for `returning_share`
# of the last day's next clicks to come from readers who had a session on an earlier day (the
# real news log with user ids: 86%). A front-page click (a session's first, and every click
# that follows no link) is a live story by its front-page weight times `taste_boost` for the
# stories of the reader's topics. As tastes are spread evenly over the topics, every story
# keeps its expected share of all clicks, so the log's statistics stay the plain news log's
# (scripts/profile_stats.py). Links and the front page are the same for everyone: what a
# reader's history can add is the topics, as the stories themselves are gone within days.


@dataclass(frozen=True)
class Readers:
    returning_share: float = 0.86  # of the last day's next clicks: readers seen on an earlier day
    n_tastes: int = 2  # topics a reader follows (of the news profile's n_topics)
    taste_boost: float = 4.0  # how much likelier a front-page story of those topics is
    activity_shape: float = 0.5  # gamma shape of the readers' activity (1: exponential)

    def __post_init__(self) -> None:
        if not 0 < self.returning_share < 1:
            raise ValueError("readers: returning_share must lie strictly between 0 and 1")
        if self.n_tastes < 1 or self.taste_boost < 1 or self.activity_shape <= 0:
            raise ValueError(
                "readers: n_tastes must be at least 1, taste_boost at least 1 (1: no tastes), "
                "activity_shape positive"
            )


@dataclass
class Cast:
    """Who reads what: reader (n_sessions,) int64 index; topics (n_readers, n_tastes)."""

    reader: np.ndarray
    topics: np.ndarray
    taste_boost: float

    def front_page(self, rng, sampler, slots: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """A front-page story for each of `sessions` at `slots`, by weight x taste_boost for
        its reader's topics: with the odds of the liked topics' weight, a story of one of
        them (the topic by its weight), else a story of any topic by weight."""
        mine = self.topics[self.reader[sessions]]  # (m, n_tastes)
        liked = sampler.topic_weight(slots[:, None], mine)  # (m, n_tastes)
        extra = (self.taste_boost - 1.0) * liked
        total = sampler.weight(slots) + extra.sum(axis=1)
        topical = rng.random(len(slots)) * np.maximum(total, 1e-300) < extra.sum(axis=1)
        drawn = sampler.draw(rng, slots)
        if topical.any():
            cum = np.cumsum(extra[topical], axis=1)
            u = rng.random(int(topical.sum())) * cum[:, -1]
            pick = mine[topical, np.minimum((cum < u[:, None]).sum(axis=1), mine.shape[1] - 1)]
            drawn[topical] = sampler.draw_topic(rng, slots[topical], pick)
        if (drawn < 0).any():
            raise ValueError("a slot has no live story: raise warm_up_days or new_items_per_day")
        return drawn


def assign_readers(
    readers: Readers, day_of: np.ndarray, lengths: np.ndarray, n_topics: int, seed: int
) -> Cast:
    """Sessions (their day index day_of and lengths, (n,)) to readers, with as many readers
    as give `returning_share` on the last day (bisection over the count; the draws come
    from their own generator, so a log without readers is drawn as before)."""
    rng = np.random.default_rng([seed, 86])
    n = len(day_of)
    most = 8 * n  # readers enough for low shares: most of them read once or never
    activity = rng.gamma(readers.activity_shape, size=most)
    u = rng.random(n)

    def cast(n_readers: int) -> np.ndarray:
        cdf = np.cumsum(activity[:n_readers])
        return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n_readers - 1)

    lo, hi = 1, most  # share(lo) >= target > share(hi), to within half a percent of the count
    while hi - lo > max(1, lo // 200):
        mid = (lo + hi) // 2
        if returning_share(cast(mid), day_of, lengths) >= readers.returning_share:
            lo = mid
        else:
            hi = mid
    k = min(readers.n_tastes, n_topics)
    topics = np.argsort(rng.random((lo, n_topics)), axis=1)[:, :k]  # k distinct topics each
    return Cast(cast(lo), topics, readers.taste_boost)


def returning_share(reader: np.ndarray, day_of: np.ndarray, lengths: np.ndarray) -> float:
    """Of the last day's next clicks (all but each session's first), the share in sessions
    of readers who had a session on an earlier day."""
    first_day = np.full(reader.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_day, reader, day_of)
    last = day_of == day_of.max()
    returning = first_day[reader] < day_of
    next_clicks = lengths - 1
    return float(next_clicks[last & returning].sum() / max(next_clicks[last].sum(), 1))
