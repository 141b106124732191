"""Catalogue churn for the synthetic click logs: items appear over time, and interest in each
rises quickly and then decays, as on a news portal or a fast-fashion shop.

    cat = generate(n_items=2000, n_sessions=20_000, days=10, churn=Churn())
    new_item_share(cat.events)   # share of the last day's next clicks on items new that day

The catalogue is a stock of items present from the start plus `new_items_per_day` items a
day, released at uniform times. Item i's click weight at time t is its base popularity
times its lifetime curve, a = t - release_i:

    c(a) = 0 before the release, else (1 - exp(-a / rise)) * (floor + (1 - floor) * 2**(-a / h_i))

with a per-item half-life h_i drawn log-normally (median `half_life_hours`, clipped to
[2 h, 7 days]). Stock items have an infinite half-life (constant interest). New items' base
popularities are scaled so that every release day brings the same total and stock items
hold `stock_share` of the click weight at the end of the log; the Zipf skew is kept.

Sessions draw their clicks with the weights of the hour they start in, taken at the start
of that hour, so no click falls before its item's release. `new_item_share` is the
statistic the defaults are tuned for: about a quarter to a third of a day's next clicks go
to items that first appear that day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import libm

DAY = 86_400.0
HOUR = 3_600.0
MIN_HALF_LIFE, MAX_HALF_LIFE = 2 * HOUR, 7 * DAY  # "hours to days"


@dataclass(frozen=True)
class Churn:
    """How the catalogue changes; the defaults give 20-35% same-day new next clicks."""

    new_items_per_day: float = 300.0
    # the evergreen stock's share of the click weight; the rest goes to items released
    # during the log, which is what sets the share of clicks on brand-new items
    stock_share: float = 0.15
    half_life_hours: float = 12.0  # median: news goes stale within a day
    half_life_spread: float = 0.8  # sigma of log half-life: some items last hours, some days
    rise_hours: float = 1.0  # interest reaches 63% of its peak an hour after release
    floor: float = 0.01  # interest left once the story is old: the odd click from a link
    # a click revisits an earlier item of its session; the popularity skew adds as many
    # again (a hot item drawn twice), for ~25% of clicks repeating one in the session
    p_repeat: float = 0.05
    # successors are drawn among this many neighbours either side in (release day, style)
    # order inside the category: items out around the same time, so a chain stays live
    successor_window: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.new_items_per_day < 0:
            problems.append(f"new_items_per_day={self.new_items_per_day} must not be negative")
        if not 0.0 < self.stock_share <= 1.0:
            problems.append(f"stock_share={self.stock_share} must be in (0, 1]")
        if self.half_life_hours <= 0 or self.rise_hours <= 0 or self.half_life_spread < 0:
            problems.append("half_life_hours and rise_hours must be positive, the spread >= 0")
        if not 0.0 <= self.floor <= 1.0 or not 0.0 <= self.p_repeat < 1.0:
            problems.append(f"floor={self.floor} and p_repeat={self.p_repeat} must be in [0, 1)")
        if self.successor_window < 1:
            problems.append(f"successor_window={self.successor_window} must be at least 1")
        if problems:
            raise ValueError("invalid churn parameters: " + "; ".join(problems))

    def n_new(self, days: float) -> int:
        return int(round(self.new_items_per_day * days))


def draw_lifetimes(
    rng: np.random.Generator, n_stock: int, n_new: int, start: float, days: float, churn: Churn
) -> tuple[np.ndarray, np.ndarray]:
    """(release (n,), half_life (n,)) in seconds, stock first: stock items are released a
    day before `start` with an infinite half-life; new ones uniformly over the days."""
    released = start + rng.random(n_new) * days * DAY
    release = np.concatenate([np.full(n_stock, start - DAY), released])
    drawn = (
        churn.half_life_hours
        * HOUR
        * libm.apply(math.exp, churn.half_life_spread * rng.standard_normal(n_new))
    )
    half_life = np.concatenate(
        [np.full(n_stock, np.inf), np.clip(drawn, MIN_HALF_LIFE, MAX_HALF_LIFE)]
    )
    return release, half_life


def interest(
    times: np.ndarray, release: np.ndarray, half_life: np.ndarray, churn: Churn
) -> np.ndarray:
    """Lifetime curve c(t - release) in [0, 1), (len(times), n_items); exactly 0 before release."""
    age = times[:, None] - release[None, :]
    # libm: numpy's SIMD expm1 / exp2 differ in the last bit on AVX-512 CPUs (training.data.libm)
    grown = -libm.apply(math.expm1, -np.maximum(age, 0.0) / (churn.rise_hours * HOUR))
    decayed = churn.floor + (1.0 - churn.floor) * libm.apply(
        math.exp2, -np.maximum(age, 0.0) / half_life
    )
    return np.where(age > 0, grown * decayed, 0.0)


def balance_popularity(
    popularity: np.ndarray,
    release: np.ndarray,
    half_life: np.ndarray,
    start: float,
    days: float,
    churn: Churn,
) -> np.ndarray:
    """Scale the new items' base popularity so that every release day has the same total
    and the stock holds `stock_share` of the click weight at the end of the log (which
    starts at `start` and lasts `days`); returns weights summing to 1."""
    stock = np.isinf(half_life)
    scaled = popularity.astype(np.float64)
    # a steady publishing rate: without it the share of brand-new items swings from day to
    # day with where the Zipf head happened to land
    day = ((release[~stock] - start) // DAY).astype(np.int64)
    per_day = np.bincount(day, weights=scaled[~stock])
    scaled[~stock] *= per_day[per_day > 0].mean() / per_day[day]
    end = np.array([start + days * DAY])  # the test day's: the stream is at its fullest
    live = scaled * interest(end, release, half_life, churn)[0]
    new_mass, stock_mass = live[~stock].sum(), live[stock].sum()
    if new_mass > 0 and churn.stock_share < 1.0:
        scaled[~stock] *= (1.0 - churn.stock_share) / churn.stock_share * stock_mass / new_mass
    return scaled / scaled.sum()


def successor_order(release: np.ndarray, style: np.ndarray, start: float) -> np.ndarray:
    """A key whose neighbours inside a category are items out on the same day and near in
    style: the stock first (by style), then one block per release day."""
    day = np.floor(np.maximum(release - start, -DAY) / DAY)  # stock: -1
    return day + style


class _Groups:
    """Weighted draws of one entry inside given groups, vectorised.

    Entries sorted by group g carry keys g + (their cumulative weight share inside g), so a
    draw in g is a binary search for g + u, u ~ U[0, 1). Zero-weight entries have no width
    and are never drawn."""

    def __init__(self, groups: np.ndarray, weights: np.ndarray, n_groups: int):
        cum = np.concatenate([[0.0], np.cumsum(weights)])
        bounds = np.searchsorted(groups, np.arange(n_groups + 1))
        before, total = cum[bounds[:-1]], cum[bounds[1:]] - cum[bounds[:-1]]
        # the last entry's share is exactly total / total = 1: no draw runs past its group
        inside = (cum[1:] - before[groups]) / np.where(total > 0, total, 1.0)[groups]
        self.keys = groups + inside

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        u = np.minimum(rng.random(len(groups)), 1.0 - 1e-9)  # g + u must stay below g + 1
        return np.searchsorted(self.keys, groups + u, side="right")


class TimedSampler:
    """Popularity x interest draws at a given hour: of an item of a category, of any item,
    and of an intent category. hours are indices into `curves`' rows.

    curves: (n_hours, n_items) interest at the start of each hour."""

    def __init__(
        self, popularity: np.ndarray, category: np.ndarray, n_categories: int, curves: np.ndarray
    ):
        n_hours, n_items = curves.shape
        weights = curves * popularity
        weights /= weights.sum(axis=1, keepdims=True)  # every hour sums to 1: even precision
        self.curves, self.n_items, self.n_categories = curves, n_items, n_categories
        self.order = np.argsort(category, kind="stable")
        hour_rows = np.arange(n_hours)[:, None]
        by_category = (hour_rows * n_categories + category[self.order]).ravel()
        self._in_category = _Groups(
            by_category, weights[:, self.order].ravel(), n_hours * n_categories
        )
        self._any = _Groups(np.repeat(np.arange(n_hours), n_items), weights.ravel(), n_hours)
        one_hot = np.eye(n_categories)[category]  # (n_items, n_categories)
        per_category = weights @ one_hot  # (n_hours, n_categories)
        self._intent = _Groups(
            np.repeat(np.arange(n_hours), n_categories), per_category.ravel(), n_hours
        )

    def draw(
        self, rng: np.random.Generator, categories: np.ndarray, hours: np.ndarray
    ) -> np.ndarray:
        pos = self._in_category.draw(rng, hours * self.n_categories + categories)
        return self.order[pos % self.n_items]

    def draw_global(self, rng: np.random.Generator, hours: np.ndarray) -> np.ndarray:
        return self._any.draw(rng, hours) % self.n_items

    def draw_intent(self, rng: np.random.Generator, hours: np.ndarray) -> np.ndarray:
        return self._intent.draw(rng, hours) % self.n_categories

    def interest(self, hours: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.curves[hours, items]


def draw_sessions(
    rng: np.random.Generator,
    lengths: np.ndarray,
    hours: np.ndarray,
    sampler: TimedSampler,
    successors: np.ndarray,
    variant: np.ndarray,
    probs: tuple[float, float, float, float],
    p_repeat: float,
) -> tuple[np.ndarray, np.ndarray]:
    """synthetic._draw_sessions at each session's hour: (clicks (max_length, n) int32,
    by_length (n,)), column j holding session by_length[j].

    What differs: every draw uses the weights of the session's hour; a successor is followed
    with probability its current interest (never before its release), else the intent
    draws; and with probability p_repeat a click revisits an earlier click of the session
    (a detour, like a noise click: the chain goes on from the click before)."""
    p_follow, p_intent, p_variant, p_switch = probs
    k = successors.shape[1]
    slot_weight = 1.0 / np.arange(1, k + 1)
    slot_weight /= slot_weight.sum()
    by_length = np.argsort(-lengths, kind="stable")
    alive = np.bincount(lengths, minlength=lengths.max() + 1)[::-1].cumsum()[::-1]
    at = hours[by_length]
    n = len(lengths)
    clicks = np.zeros((lengths.max(), n), dtype=np.int32)
    intent = sampler.draw_intent(rng, at)
    first = sampler.draw(rng, intent, at)
    noise = rng.random(n) < 1.0 - p_follow - p_intent
    clicks[0] = np.where(noise, sampler.draw_global(rng, at), first)
    anchor = clicks[0].astype(np.int64)
    before = np.full(n, -1, dtype=np.int64)
    for t in range(1, lengths.max()):
        m = alive[t + 1]
        hour = at[:m]
        switch = rng.random(m) < p_switch
        intent[:m][switch] = sampler.draw_intent(rng, hour[switch])
        slot = rng.choice(k, size=m, p=slot_weight)
        steer = (before[:m] >= 0) & (rng.random(m) < p_variant)
        slot[steer] = variant[before[:m][steer]]
        u = rng.random(m)
        nxt = successors[anchor[:m], slot]
        faded = rng.random(m) >= sampler.interest(hour, nxt)
        nxt = np.where((u >= p_follow) | faded, sampler.draw(rng, intent[:m], hour), nxt)
        nxt = np.where(u >= p_follow + p_intent, sampler.draw_global(rng, hour), nxt)
        repeat = rng.random(m) < p_repeat
        earlier = clicks[(rng.random(m) * t).astype(np.int64), np.arange(m)]
        clicks[t, :m] = np.where(repeat, earlier, nxt)
        meant = np.flatnonzero((u < p_follow + p_intent) & ~repeat)
        before[meant] = anchor[meant]
        anchor[meant] = nxt[meant]
    return clicks, by_length


def new_item_share(events: pd.DataFrame, days_ago: int = 0) -> float:
    """Share of one day's next-click targets whose item is first clicked in `events` that
    same day.

    Days are 24-hour windows counted back from the last click (0 = the last 24 hours, the
    day `split_by_time` makes the test set of). Targets are every click but a session's
    first, as in evaluation. Columns SessionId, ItemId, Time. NaN when the day has none."""
    ev = events.sort_values(["SessionId", "Time"], kind="stable")
    day = np.floor((ev["Time"].max() - ev["Time"].to_numpy()) / DAY).astype(np.int64)
    first_seen = ev.groupby("ItemId")["Time"].transform("min").to_numpy()
    first_day = np.floor((ev["Time"].max() - first_seen) / DAY).astype(np.int64)
    is_target = ev.groupby("SessionId").cumcount().to_numpy() > 0
    on_day = is_target & (day == days_ago)
    if not on_day.any():
        return float("nan")
    return float((first_day[on_day] == days_ago).mean())
