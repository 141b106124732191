"""Synthetic click logs with real sequential structure, for the demo, tests and benchmarks.

    cat = generate(n_items=3000, n_sessions=30_000, seed=0)
    cat.events            # SessionId (str), ItemId (str), Time (float Unix seconds)
    generate_to_dir("data/synthetic")   # events.tsv, items.tsv, train.tsv, test.tsv

How a session is drawn (so that order matters, and a sequence model has something to learn
that popularity and first-order co-occurrence miss):
  * every item has a category, a Zipf-like popularity, a `style` in [0, 1) (its place on a
    circle inside the category) and a `variant` in [0, n_successors);
  * every item has `n_successors` likely next items: mostly items of its own category with a
    nearby style, picked by popularity; a few anywhere in the catalogue;
  * a session has a latent intent (a category) that switches with probability `p_switch`
    per click; the first click is a popular item of the intent;
  * each later click is, with probability `p_follow`, a successor of the previous meant click;
    which one depends on the meant click *before* that: with probability `p_variant` the
    successor in its slot `variant[before]`, else a slot drawn with decreasing weights.
    Otherwise it is a popular item of the intent category (`p_intent`) or of the whole
    catalogue (noise). Noise clicks are detours: the chain resumes from the click before;
  * lengths are 1 + geometric (min 2, mean `mean_length`); sessions start uniformly over
    `days` days; clicks inside a session are 5 s + exponential(55 s) apart.
Generation is vectorised over sessions (one numpy step per click position), so 100,000 items
by 300,000 sessions take seconds. The same seed gives the same catalogue and events.

With `churn=Churn(...)` (training.data.churn) items appear over time and their interest rises and
decays: `n_items` is then the stock present from the start, and `new_items_per_day` items a
day come on top; every draw above is weighted by the items' interest at the session's time,
and clicks sometimes revisit an earlier item of the session. Without it (the default) the
output is the same, bit for bit, as before churn existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import libm
from .churn import Churn, TimedSampler, balance_popularity, draw_lifetimes, successor_order
from .churn import draw_sessions as draw_churned_sessions
from .churn import interest as interest_curve

DAY = 86_400.0
HOUR = 3_600.0
START_TIME = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC; any fixed origin would do


@dataclass
class SyntheticCatalog:
    """A generated data set and the latent truth it was drawn from (index order = item_ids).

    events: SessionId (str), ItemId (str), Time (float s); sessions ordered by start time.
    item_ids: (n_items,) str, opaque ids "i00042".
    item_category: (n_items,) int64 in [0, n_categories).
    item_popularity: (n_items,) float64, the Zipf-like click weights, summing to 1.
    item_style: (n_items,) float64 in [0, 1): position on a circle inside the category;
        successors are near in style, so a picture drawn from it predicts what follows.
    item_variant: (n_items,) int64 in [0, n_successors): the successor slot this item steers
        to when it is the item before the previous one (the second-order signal).
    successors: (n_items, n_successors) int64 item indices.
    item_release, item_half_life: (n_items,) float64 seconds, with churn only: the release
        time (Unix s) and the half-life of interest (inf for the evergreen stock).
    """

    events: pd.DataFrame
    item_ids: np.ndarray
    item_category: np.ndarray
    item_popularity: np.ndarray
    item_style: np.ndarray
    item_variant: np.ndarray
    successors: np.ndarray
    item_release: np.ndarray | None = None
    item_half_life: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def items_frame(self) -> pd.DataFrame:
        """One row per item: ItemId, category, popularity, style, variant; with churn also
        release (Unix s) and half_life_hours (inf for the stock)."""
        columns = {
            "ItemId": self.item_ids,
            "category": self.item_category,
            "popularity": self.item_popularity,
            "style": self.item_style,
            "variant": self.item_variant,
        }
        if self.item_release is not None and self.item_half_life is not None:
            columns["release"] = self.item_release
            columns["half_life_hours"] = self.item_half_life / 3600.0
        return pd.DataFrame(columns)


def generate(
    n_items: int = 3000,
    n_sessions: int = 30_000,
    n_categories: int = 40,
    days: float = 14.0,
    seed: int = 0,
    *,
    mean_length: float = 6.0,
    max_length: int = 50,
    zipf_exponent: float = 0.9,
    n_successors: int = 4,
    p_follow: float = 0.6,
    p_intent: float = 0.3,
    p_variant: float = 0.75,
    p_switch: float = 0.1,
    churn: Churn | None = None,
) -> SyntheticCatalog:
    """Draw a catalogue and `n_sessions` sessions over `days` days (see the module docstring).

    With `churn`, n_items is the stock present from the start and churn.n_new(days) more
    items are released during the log (their ids follow the stock's).
    Raises ValueError when the sizes or probabilities make no sense.
    """
    _check(n_items, n_sessions, n_categories, days, mean_length, max_length, p_follow, p_intent)
    rng = np.random.default_rng(seed)
    n_total = n_items + (churn.n_new(days) if churn is not None else 0)
    ranks = rng.permutation(n_total) + 1  # which item gets which popularity rank
    popularity = 1.0 / libm.power(ranks, zipf_exponent)  # same bits on every CPU
    popularity /= popularity.sum()
    category = rng.integers(0, n_categories, n_total)
    style = rng.random(n_total)
    variant = rng.integers(0, n_successors, n_total)
    cat = SyntheticCatalog(
        events=pd.DataFrame(),
        item_ids=_item_ids(n_total),
        item_category=category.astype(np.int64),
        item_popularity=popularity,
        item_style=style,
        item_variant=variant.astype(np.int64),
        successors=np.zeros((n_total, n_successors), dtype=np.int64),
    )
    probs = (p_follow, p_intent, p_variant, p_switch)
    if churn is not None:
        sizes = (n_items, n_sessions, n_categories, mean_length, max_length)
        return _add_churned_sessions(rng, cat, sizes, days, probs, churn)
    sampler = _CategorySampler(category, popularity, n_categories)
    cat.successors = _draw_successors(rng, category, style, popularity, sampler, n_successors)

    lengths = np.minimum(1 + rng.geometric(1.0 / (mean_length - 1.0), n_sessions), max_length)
    items = _draw_sessions(rng, lengths, sampler, cat.successors, variant, popularity, probs)
    start = START_TIME + rng.random(n_sessions) * days * DAY  # uniform session starts
    cat.events = _timestamps(rng, lengths, items, start, n_items)
    return cat


def _add_churned_sessions(
    rng: np.random.Generator,
    cat: SyntheticCatalog,
    sizes: tuple[int, int, int, float, int],
    days: float,
    probs: tuple[float, float, float, float],
    churn: Churn,
) -> SyntheticCatalog:
    """generate()'s steps for a changing catalogue (training.data.churn): lifetimes, popularity
    balanced between stock and new items, successors out around the same time, then
    sessions drawn with the weights of the hour they start in."""
    n_stock, n_sessions, n_categories, mean_length, max_length = sizes
    release, half_life = draw_lifetimes(
        rng, n_stock, cat.n_items - n_stock, START_TIME, days, churn
    )
    popularity = balance_popularity(
        cat.item_popularity, release, half_life, START_TIME, days, churn
    )
    static = _CategorySampler(cat.item_category, popularity, n_categories)  # cross slots
    cat.successors = _draw_successors(
        rng,
        cat.item_category,
        successor_order(release, cat.item_style, START_TIME),
        popularity,
        static,
        cat.successors.shape[1],
        window=churn.successor_window,
    )
    lengths = np.minimum(1 + rng.geometric(1.0 / (mean_length - 1.0), n_sessions), max_length)
    start = START_TIME + rng.random(n_sessions) * days * DAY
    hour = ((start - START_TIME) // HOUR).astype(np.int64)
    hour_starts = START_TIME + HOUR * np.arange(hour.max() + 1)
    curves = interest_curve(hour_starts, release, half_life, churn)
    timed = TimedSampler(popularity, cat.item_category, n_categories, curves)
    items = draw_churned_sessions(
        rng, lengths, hour, timed, cat.successors, cat.item_variant, probs, churn.p_repeat
    )
    cat.events = _timestamps(rng, lengths, items, start, cat.n_items)
    cat.item_popularity, cat.item_release, cat.item_half_life = popularity, release, half_life
    return cat


def _check(n_items, n_sessions, n_categories, days, mean_length, max_length, p_follow, p_intent):
    problems = []
    if n_items < 2 or n_sessions < 1:
        problems.append(f"need n_items >= 2 and n_sessions >= 1 (got {n_items}, {n_sessions})")
    if not 1 <= n_categories <= n_items:
        problems.append(f"n_categories={n_categories} must be in [1, n_items={n_items}]")
    if days <= 0:
        problems.append(f"days={days} must be positive")
    if not 2.0 < mean_length <= max_length:
        problems.append(f"mean_length={mean_length} must be in (2, max_length={max_length}]")
    if p_follow < 0 or p_intent < 0 or p_follow + p_intent > 1:
        problems.append(f"p_follow={p_follow} + p_intent={p_intent} must lie in [0, 1]")
    if problems:
        raise ValueError("invalid synthetic data parameters: " + "; ".join(problems))


class _CategorySampler:
    """Popularity-weighted draws of items inside given categories, vectorised.

    Items sorted by category carry keys c + (cumulative weight share inside c), so a draw for
    category c is a binary search for c + u, u ~ U[0, 1).
    """

    def __init__(self, category: np.ndarray, popularity: np.ndarray, n_categories: int):
        self.order = np.argsort(category, kind="stable")
        cat_sorted = category[self.order]
        weights = popularity[self.order]
        starts = np.searchsorted(cat_sorted, np.arange(n_categories))
        cum = np.cumsum(weights)
        before = np.concatenate([[0.0], cum])[starts]  # total weight of earlier categories
        totals = np.bincount(cat_sorted, weights=weights, minlength=n_categories)
        inside = (cum - before[cat_sorted]) / np.where(totals > 0, totals, 1.0)[cat_sorted]
        self.keys = cat_sorted + inside
        # A category may be empty; intents are drawn by weight, so an empty one is never drawn.
        self.category_weight = totals / totals.sum()
        self.global_cum = np.cumsum(popularity)

    def draw(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, categories + rng.random(len(categories)), side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]

    def draw_global(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pos = np.searchsorted(self.global_cum, rng.random(n) * self.global_cum[-1], side="right")
        return np.minimum(pos, len(self.global_cum) - 1)

    def draw_intent(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(len(self.category_weight), size=n, p=self.category_weight)


def _draw_successors(
    rng: np.random.Generator,
    category: np.ndarray,
    style: np.ndarray,
    popularity: np.ndarray,
    sampler: _CategorySampler,
    k: int,
    window: int = 10,
    p_cross: float = 0.1,
) -> np.ndarray:
    """(n_items, k) successors: per item, k of the `2 * window` items of its category nearest
    in style (around the circle), without replacement, by popularity (Gumbel top-k); each slot
    is replaced by a catalogue-wide popular item with probability p_cross."""
    n = len(category)
    order = np.lexsort((style, category))  # by category, then style
    cat_sorted = category[order]
    starts = np.searchsorted(cat_sorted, cat_sorted, side="left")
    sizes = np.bincount(cat_sorted, minlength=cat_sorted.max() + 1)[cat_sorted]
    rank = np.arange(n) - starts
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])  # (2W,)
    cand = order[starts[:, None] + (rank[:, None] + offsets) % sizes[:, None]]  # (n, 2W)
    gumbel = -np.log(-np.log(rng.random(cand.shape)))
    keys = np.log(popularity[cand]) + gumbel
    keys[cand == order[:, None]] = -np.inf  # never an item's own successor (tiny categories)
    best = np.argsort(-keys, axis=1)[:, :k]
    succ = np.empty((n, k), dtype=np.int64)
    succ[order] = np.take_along_axis(cand, best, axis=1)
    cross = rng.random((n, k)) < p_cross
    succ[cross] = sampler.draw_global(rng, int(cross.sum()))
    self_loop = succ == np.arange(n)[:, None]
    succ[self_loop] = (succ[self_loop] + 1) % n  # a repeat click is not a successor
    return succ


def _draw_sessions(
    rng: np.random.Generator,
    lengths: np.ndarray,
    sampler: _CategorySampler,
    successors: np.ndarray,
    variant: np.ndarray,
    popularity: np.ndarray,
    probs: tuple[float, float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """(clicks (max_length, n) int32, by_length (n,)): column j holds the session
    `by_length[j]`, padded past its length; one vectorised step per click position.

    Sessions are processed longest first, so the ones still running at step t are a prefix."""
    p_follow, p_intent, p_variant, p_switch = probs
    k = successors.shape[1]
    slot_weight = 1.0 / np.arange(1, k + 1)  # slot 0 most likely when no variant applies
    slot_weight /= slot_weight.sum()
    by_length = np.argsort(-lengths, kind="stable")
    alive = np.bincount(lengths, minlength=lengths.max() + 1)[::-1].cumsum()[::-1]  # len > t
    n = len(lengths)
    clicks = np.zeros((lengths.max(), n), dtype=np.int32)
    intent = sampler.draw_intent(rng, n)
    first = sampler.draw(rng, intent)
    noise = rng.random(n) < 1.0 - p_follow - p_intent
    clicks[0] = np.where(noise, sampler.draw_global(rng, n), first)
    # The chain goes on from the last *meant* click: a noise click is a detour, after which the
    # session resumes from the item before it (what a first-order model cannot see).
    anchor = clicks[0].astype(np.int64)
    before = np.full(n, -1, dtype=np.int64)  # the meant click before the anchor, -1 = none
    for t in range(1, lengths.max()):
        m = alive[t + 1]  # sessions with length > t
        switch = rng.random(m) < p_switch
        intent[:m][switch] = sampler.draw_intent(rng, int(switch.sum()))
        slot = rng.choice(k, size=m, p=slot_weight)
        steer = (before[:m] >= 0) & (rng.random(m) < p_variant)
        slot[steer] = variant[before[:m][steer]]
        u = rng.random(m)
        nxt = successors[anchor[:m], slot]
        nxt = np.where(u >= p_follow, sampler.draw(rng, intent[:m]), nxt)
        nxt = np.where(u >= p_follow + p_intent, sampler.draw_global(rng, m), nxt)
        clicks[t, :m] = nxt
        meant = np.flatnonzero(u < p_follow + p_intent)
        before[meant] = anchor[meant]
        anchor[meant] = nxt[meant]
    return clicks, by_length


def _timestamps(
    rng: np.random.Generator,
    lengths: np.ndarray,
    drawn: tuple[np.ndarray, np.ndarray],
    start: np.ndarray,
    n_items: int,
) -> pd.DataFrame:
    """Events frame: session s starts at start[s] (Unix s), ids given in start order."""
    clicks, by_length = drawn
    n = len(lengths)
    chrono = np.argsort(start[by_length], kind="stable")  # positions in by_length order
    lens = lengths[by_length][chrono]
    rows = clicks.T[chrono]  # (n, max_length), sessions in start order
    items = rows[np.arange(rows.shape[1]) < lens[:, None]]  # row-major: session by session
    gaps = 5.0 + rng.exponential(55.0, len(items))
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first], lens)  # restart the clock in every session
    times = np.repeat(start[by_length][chrono], lens) + elapsed
    width = len(str(n - 1))
    session_ids = np.array([f"s{i:0{width}d}" for i in range(n)], dtype=object)
    return pd.DataFrame(
        {
            "SessionId": np.repeat(session_ids, lens),
            "ItemId": _item_ids(n_items)[items],
            "Time": times,
        }
    )


def _item_ids(n_items: int) -> np.ndarray:
    width = max(5, len(str(n_items - 1)))
    return np.array([f"i{i:0{width}d}" for i in range(n_items)], dtype=object)


def generate_to_dir(
    out_dir: str | Path,
    n_items: int | None = None,
    n_sessions: int | None = None,
    seed: int = 0,
    test_days: float = 1.0,
    **kwargs: Any,
) -> dict[str, Path]:
    """Generate (None = the default size), then write events.tsv (every click), items.tsv
    (ItemId, category, popularity, style, variant) and, after the GRU4Rec preprocessing and a
    split of the sessions ending in the last `test_days` days, train.tsv and test.tsv.
    Returns the written paths by name."""
    from .logs import preprocess, split_by_time, write_events

    sizes: dict[str, Any] = {"n_items": n_items, "n_sessions": n_sessions}
    cat = generate(seed=seed, **{k: v for k, v in sizes.items() if v is not None}, **kwargs)
    out = Path(out_dir)
    paths = {name: out / f"{name}.tsv" for name in ("events", "items", "train", "test")}
    write_events(cat.events, paths["events"])
    cat.items_frame().to_csv(paths["items"], sep="\t", index=False)
    train, test = split_by_time(preprocess(cat.events), test_days)
    write_events(train, paths["train"])
    write_events(test, paths["test"])
    return paths
