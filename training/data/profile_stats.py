"""The statistics a click log is checked against when a generator claims a real log's shape.

    stats = profile_statistics(events)       # {name: value}, names as in NEWS_TARGETS
    rows = compare(stats, NEWS_TARGETS)       # [{"statistic", "target", "generated", ...}]

events: SessionId, ItemId, Time (Unix s). Days and hours are UTC calendar days and hours of
day. A next click is every click but a session's first (what evaluation predicts). Item
ages count from the item's first click in `events`, as in a log whose releases are unknown.
Counts a day are medians over the calendar days (robust to a partial first or last day);
per-day shares of new items leave out the log's first day, when every item is new.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DAY = 86_400.0
HOUR = 3_600.0
AGE_QUANTILES = (10, 25, 50, 75, 90)
WITHIN_HOURS = (1, 3, 6, 24, 48)
MIN_ITEM_CLICKS = 20  # items that count towards the "clicks within h hours" medians

# The real news portal's log (issue #20); shares as fractions.
NEWS_TARGETS: dict[str, float] = {
    "clicks a day": 180_000,
    "distinct items clicked in a day": 4_200,
    "distinct items clicked in 5 days": 18_349,
    "session length median": 2,
    "session length p75": 3,
    "session length p90": 4,
    "session length p99": 9,
    "session length mean": 2.68,
    "next click repeats an item of the session": 0.0,
    "next click repeats the last click": 0.0,
    "next-click targets first seen that day": 0.338,
    "new items a day (2,000-4,000)": 3_000,
    **{
        f"item age at click p{q} (h)": v
        for q, v in zip(AGE_QUANTILES, (2.9, 7.1, 20, 41, 74), strict=True)
    },
    **{
        f"item's clicks within {h} h of its first (median item)": v
        for h, v in zip(WITHIN_HOURS, (0.09, 0.24, 0.43, 0.95, 1.0), strict=True)
    },
    "top-20 items' share of a day's clicks": 0.515,
    "top-100 items' share of a day's clicks": 0.779,
    "seconds between clicks median": 30,
    "seconds between clicks p90": 357,
    "quietest hour's share of a day's clicks": 0.006,
    "busiest hour's share of a day's clicks": 0.068,
}
# The e-commerce log gives only the repeat shares.
SHOP_TARGETS: dict[str, float] = {
    "next click repeats an item of the session": 0.34,
    "next click repeats the last click": 0.26,
}
# Rows that count things a day: they grow with a generator's `scale`.
COUNT_ROWS = (
    "clicks a day",
    "distinct items clicked in a day",
    "distinct items clicked in 5 days",
    "new items a day (2,000-4,000)",
)


def profile_statistics(events: pd.DataFrame, top: tuple[int, int] = (20, 100)) -> dict:
    """Every statistic of NEWS_TARGETS for `events` ({name: float}, NaN when undefined).

    top: the k of the two top-k share rows (their names keep 20 and 100, so a scaled-down
    log can be checked with proportionally fewer items)."""
    ev = events.sort_values(["SessionId", "Time"], kind="stable").reset_index(drop=True)
    time = ev["Time"].to_numpy(np.float64)
    item = pd.factorize(ev["ItemId"])[0]
    session = pd.factorize(ev["SessionId"])[0]
    day = np.floor(time / DAY).astype(np.int64)
    first_seen = pd.Series(time).groupby(item).transform("min").to_numpy()
    is_next = np.concatenate([[False], session[1:] == session[:-1]])
    stats: dict[str, float] = {}
    stats.update(_daily_counts(day, item, first_seen))
    stats.update(_lengths(session))
    stats.update(_repeats(session, item, is_next))
    first_day = np.floor(first_seen / DAY).astype(np.int64)
    later = is_next & (day > day.min())
    stats["next-click targets first seen that day"] = _mean(first_day[later] == day[later])
    stats.update(_ages(item, (time - first_seen) / HOUR))
    for k, name in zip(top, (20, 100), strict=True):
        stats[f"top-{name} items' share of a day's clicks"] = _top_share(day, item, k)
    gaps = np.diff(time)[is_next[1:]]
    for name, q in (("median", 50), ("p90", 90)):
        stats[f"seconds between clicks {name}"] = _quantile(gaps, q)
    per_hour = np.bincount(((time % DAY) // HOUR).astype(np.int64), minlength=24) / len(time)
    stats["quietest hour's share of a day's clicks"] = float(per_hour.min())
    stats["busiest hour's share of a day's clicks"] = float(per_hour.max())
    return stats


def _daily_counts(day: np.ndarray, item: np.ndarray, first_seen: np.ndarray) -> dict:
    days = np.unique(day)
    per_day = pd.DataFrame({"day": day, "item": item})
    distinct = per_day.groupby("day")["item"].nunique()
    first_days = np.floor(first_seen / DAY).astype(np.int64)
    new = pd.Series(first_days[np.unique(item, return_index=True)[1]]).value_counts()
    new = new.reindex(days[1:], fill_value=0)
    in_five = item[day < days[0] + 5]
    return {
        "clicks a day": float(np.median(np.bincount(day - days[0]))),
        "distinct items clicked in a day": float(distinct.median()),
        "distinct items clicked in 5 days": (
            float(len(np.unique(in_five))) if days[-1] - days[0] >= 4 else math.nan
        ),
        "new items a day (2,000-4,000)": float(new.median()) if len(new) else math.nan,
    }


def _lengths(session: np.ndarray) -> dict:
    lengths = np.bincount(session)
    out = {f"session length {n}": _quantile(lengths, q) for n, q in
           (("median", 50), ("p75", 75), ("p90", 90), ("p99", 99))}  # fmt: skip
    out["session length mean"] = float(lengths.mean())
    return out


def _repeats(session: np.ndarray, item: np.ndarray, is_next: np.ndarray) -> dict:
    """Shares of next clicks on an item clicked earlier in the session, and on the last."""
    earlier = pd.DataFrame({"s": session, "i": item}).duplicated().to_numpy()
    same_as_last = np.concatenate([[False], item[1:] == item[:-1]]) & is_next
    return {
        "next click repeats an item of the session": _mean(earlier[is_next]),
        "next click repeats the last click": _mean(same_as_last[is_next]),
    }


def _ages(item: np.ndarray, age_hours: np.ndarray) -> dict:
    out = {f"item age at click p{q} (h)": _quantile(age_hours, q) for q in AGE_QUANTILES}
    clicks = np.bincount(item)
    big = clicks >= MIN_ITEM_CLICKS
    for h in WITHIN_HOURS:
        within = np.bincount(item, weights=age_hours <= h, minlength=len(clicks))
        share = within[big] / clicks[big]
        out[f"item's clicks within {h} h of its first (median item)"] = (
            float(np.median(share)) if big.any() else math.nan
        )
    return out


def _top_share(day: np.ndarray, item: np.ndarray, k: int) -> float:
    """Median over days of the k most clicked items' share of the day's clicks."""
    counts = pd.DataFrame({"day": day, "item": item}).value_counts()  # sorted, largest first
    top = counts.groupby(level="day").head(k).groupby(level="day").sum()
    return float(np.median(top / counts.groupby(level="day").sum()))


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _mean(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else math.nan


def compare(stats: dict, targets: dict, tolerance: float = 0.2) -> list[dict]:
    """One row per statistic of `stats`: statistic, target (None where the real log gives
    none), generated, relative_difference ((generated - target) / target; None for a zero
    or missing target) and within_20pct (|generated - target| <= tolerance * |target|, so a
    target of 0 must be met exactly; None without a target)."""
    rows = []
    for name, value in stats.items():
        target = targets.get(name)
        row = {"statistic": name, "target": target, "generated": _rounded(value)}
        if target is None:
            row.update(relative_difference=None, within_20pct=None)
        else:
            rel = (value - target) / target if target else None
            row["relative_difference"] = None if rel is None else round(rel, 4)
            row["within_20pct"] = bool(abs(value - target) <= tolerance * abs(target))
        rows.append(row)
    return rows


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of compare()'s rows."""
    lines = [f"{'statistic':<58} {'target':>10} {'generated':>10}  within 20%"]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:g}"
        ok = {True: "yes", False: "NO", None: "-"}[r["within_20pct"]]
        lines.append(f"{r['statistic']:<58} {target:>10} {r['generated']!s:>10}  {ok}")
    return "\n".join(lines)
