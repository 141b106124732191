"""Progressive validation of service.learning.online on a generated click stream with item
churn, walked by service.tools.replay's walk: each click is learnt, then the session's next
click predicted, in time order.

    .venv/bin/python scripts/bench_online.py               # the table (about 35 s)
    .venv/bin/python scripts/bench_online.py --sweep       # the 54 runs behind the defaults
    .venv/bin/python scripts/bench_online.py --sessions 8000 --days 2    # quick

The stream (seeded, generated here): 3,000 evergreen items with Zipf popularity and 400 news
items a day, each with a log-normal peak interest reached over 10-60 min and fading over
4-24 h; every item has a topic and six related links, drawn at publication from its topic by
interest and fixed from then on. A session starts on the home page (popular now); each later
click follows a link of the previous page (30%, the first links most), takes a popular-now
item of the session's topic (20%) or of the whole site (50%). Session starts follow a daily
cycle; clicks are 10 s + exp(50 s) apart. The first day is only learnt (warm-up); Recall@20
and MRR@20 are over every later next click, nothing excluded. "hits by source": of the hits,
the share whose largest term was that statistic. The us columns are wall time per call on
this machine; the last line gives its speed at the model's unit of work, a dict update.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.learning.online import SOURCE_NAMES, OnlineConfig, OnlineModel  # noqa: E402
from service.tools.replay import Click, walk  # noqa: E402

DAY = 86_400.0
START = 1_700_000_000.0
BUCKET_S = 300.0  # interest is evaluated every 5 minutes
P_LINK, P_TOPIC = 0.3, 0.2  # the rest of later clicks: popular now on the whole site
LINK_WEIGHTS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])  # which related link is followed


def make_items(
    rng: np.random.Generator, days: float, n_topics: int, news_per_day: int
) -> tuple[np.ndarray, ...]:
    """Items sorted by topic: (topic, publish time, peak interest, rise s, fade s)."""
    n_ever = 3000
    n_news = int(news_per_day * (days + 1))
    publish = np.concatenate(
        [np.full(n_ever, -np.inf), START - DAY + rng.random(n_news) * (days + 1) * DAY]
    )
    # evergreen: Zipf by rank; news: log-normal peaks, so that a few stories dominate an hour
    # (the 20 most interesting items hold ~45% of the interest, news ~2/3 of it)
    zipf = 200.0 * np.arange(1, n_ever + 1, dtype=np.float64) ** -1.0
    peak = np.concatenate([rng.permutation(zipf), rng.lognormal(0.0, 2.5, n_news)])
    rise = rng.uniform(600, 3600, n_ever + n_news)
    fade = rng.uniform(4, 24, n_ever + n_news) * 3600
    topic = rng.integers(0, n_topics, n_ever + n_news)
    order = np.argsort(topic, kind="stable")
    return topic[order], publish[order], peak[order], rise[order], fade[order]


def interest_table(items: tuple[np.ndarray, ...], days: float) -> np.ndarray:
    """(n_buckets, n_items) cumulative interest over the topic-sorted items, per bucket."""
    _, publish, peak, rise, fade = items
    times = START + np.arange(0, days * DAY + BUCKET_S, BUCKET_S)
    age = times[:, None] - publish[None, :]
    news = (1 - np.exp(-np.maximum(age, 0) / rise)) * np.exp(-np.maximum(age, 0) / fade)
    w = np.where(np.isinf(publish), 1.0, np.where(age > 0, news, 0.0)) * peak
    return np.cumsum(w, axis=1)


Event = tuple[float, int, str]  # time (s), session number, item id


def generate(n_sessions: int, days: float, seed: int) -> list[Event]:
    """(time, session, item id) for every click, in time order."""
    rng = np.random.default_rng(seed)
    items = make_items(rng, days, n_topics=40, news_per_day=400)
    topic = items[0]
    cum = interest_table(items, days)
    lo = np.searchsorted(topic, np.arange(40))
    hi = np.searchsorted(topic, np.arange(40), side="right")

    def draw(b: int, t: int | None) -> int:
        row = cum[b]
        a, z = (0, len(row)) if t is None else (lo[t], hi[t])
        base = row[a - 1] if a > 0 else 0.0
        return int(np.searchsorted(row, base + rng.random() * (row[z - 1] - base), "right"))

    # links: at publication, related items of the same topic, by interest then
    published = np.maximum(items[1], START)  # evergreen and early items: the first bucket
    b_pub = np.minimum((published - START) // BUCKET_S, len(cum) - 1).astype(np.int64)
    links = np.array([[draw(b_pub[i], topic[i]) for _ in LINK_WEIGHTS] for i in range(len(topic))])
    # daily cycle: sessions are three times as frequent at the peak as in the trough
    starts = START + rng.random(n_sessions * 3) * days * DAY
    keep = rng.random(len(starts)) < (2 + np.sin(2 * np.pi * starts / DAY)) / 3
    starts = np.sort(starts[keep][:n_sessions])
    events = []
    for s, t in enumerate(starts):
        b = int((t - START) // BUCKET_S)
        x = draw(b, None)
        intent = topic[x]
        for k in range(1 + rng.geometric(1 / 3.5)):
            if k:
                t += 10 + rng.exponential(50)
                u = rng.random()
                if u < P_LINK:
                    x = int(links[x, rng.choice(len(LINK_WEIGHTS), p=LINK_WEIGHTS)])
                else:
                    x = draw(b, intent if u < P_LINK + P_TOPIC else None)
            events.append((float(t), s, f"i{x:05d}"))
    events.sort()
    return events


def replay(
    events: list[Event], config: OnlineConfig, warmup_until: float, n: int = 20
) -> dict[str, Any]:
    """service.tools.replay's walk with the online model alone: the warm-up learnt, then each
    click learnt and the session's next click predicted at its time."""
    model = OnlineModel(config)
    clicks = [Click(str(s), x, t) for t, s, x in events]
    history = [c for c in clicks if c.time < warmup_until]
    test = clicks[len(history) :]
    seconds = {"learn": 0.0, "score": 0.0}
    sources = np.zeros(len(SOURCE_NAMES))
    last: dict[str, tuple[list[str], list[int]]] = {}  # session -> its last ids and sources

    def learn(session: str, session_clicks: list[str], t: float) -> None:
        t1 = time.perf_counter()
        model.learn(session_clicks, t)
        seconds["learn"] += time.perf_counter() - t1

    def answer(session: str, session_clicks: list[str], t: float, k: int) -> list[str]:
        before = last.pop(session, None)
        if before is not None and session_clicks[-1] in before[0]:  # a hit: whose was it
            sources[before[1][before[0].index(session_clicks[-1])]] += 1
        learn(session, session_clicks, t)
        t1 = time.perf_counter()
        ids, _, src = model.score(session_clicks, t, k)
        seconds["score"] += time.perf_counter() - t1
        last[session] = (ids, src)
        return ids

    out = walk(history, test, learn, answer, (n,))
    hits = sources.sum()
    stats = model.stats()
    return {
        "recall": out[f"recall@{n}"],
        "mrr": out[f"mrr@{n}"],
        "us_learn": 1e6 * seconds["learn"] / len(events),
        "us_score": 1e6 * seconds["score"] / max(len(test), 1),
        "mb": model.memory_bytes() / 1e6,
        "items": stats["items"],
        "transitions": stats["transitions"],
        "hit_sources": " ".join(
            f"{name} {v / max(hits, 1):.2f}"
            for name, v in zip(SOURCE_NAMES, sources, strict=True)
            if v
        ),
    }


def describe(events: list[Event], warmup_until: float) -> str:
    """Clicks, items, and how many scored targets are items first clicked the same day."""
    first: dict[str, float] = {}
    seen_session: set[int] = set()
    new = total = 0
    for t, s, x in events:
        first.setdefault(x, t)
        if s in seen_session and t >= warmup_until:
            total += 1
            new += (first[x] - START) // DAY == (t - START) // DAY
        seen_session.add(s)
    share = f"{new / total:.0%} of scored targets first clicked that day"
    return f"{len(events):,} clicks, {len(first):,} items; {share}"


RUNS: dict[str, dict[str, Any]] = {
    "recent popularity": dict(w_transition=0, w_transition2=0, w_popularity=1),
    "transitions": dict(w_transition=1, w_transition2=0, w_popularity=0),
    "transitions, then popularity": dict(w_transition2=0, w_popularity=1e-6, smoothing=0),
    "mixture (defaults)": {},
    "mixture + session-KNN": dict(w_knn=0.25),
    # the default caps never bind on this stream (under 4,000 items): eviction's own cost
    "mixture, caps 1,000 items / 10,000 transitions": dict(max_items=1000, max_transitions=10_000),
}


def sweep(events: list[Event], warmup_until: float) -> None:
    """Every combination of the grid (session-KNN off); the five best Recall@20 + MRR@20."""
    grid: dict[str, list[Any]] = {
        "transition_half_life_s": [3600.0, 14400.0, 43200.0],
        "w_transition2": [0.0, 0.1, 0.25],
        "w_popularity": [0.3, 0.6, 1.0],
        "smoothing": [1.0, 4.0],
    }
    results = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        r = replay(events, replace(OnlineConfig(), w_knn=0.0, **params), warmup_until)
        results.append((r["recall"] + r["mrr"], r["recall"], r["mrr"], params))
        print(f"Recall@20 {r['recall']:.4f} MRR@20 {r['mrr']:.4f} {params}", flush=True)
    for _, recall, mrr, params in sorted(results, key=itemgetter(0), reverse=True)[:5]:
        print(f"best: Recall@20 {recall:.4f} MRR@20 {mrr:.4f} {params}")


def dict_update_ns() -> float:
    """This machine's speed in the unit the online model spends: ns per dict get-and-set."""
    keys = [f"i{k:07d}" for k in range(200)]
    best = float("inf")
    for _ in range(20):
        table: dict[str, float] = {}
        get = table.get
        t1 = time.perf_counter()
        for k in keys:
            table[k] = get(k, 0.0) + 1.0
        best = min(best, time.perf_counter() - t1)
    return 1e9 * best / len(keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=30_000)
    p.add_argument("--days", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="grid over weights instead of the table")
    args = p.parse_args()
    t0 = time.perf_counter()
    events = generate(args.sessions, args.days, args.seed)
    warmup_until = START + DAY
    print(f"stream: {describe(events, warmup_until)} ({time.perf_counter() - t0:.1f} s)")
    if args.sweep:
        sweep(events, warmup_until)
        return
    print("| run | Recall@20 | MRR@20 | us/learn | us/score | memory MB | hits by source |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in RUNS.items():
        r = replay(events, replace(OnlineConfig(), **overrides), warmup_until)
        print(
            f"| {name} | {r['recall']:.3f} | {r['mrr']:.3f} | {r['us_learn']:.1f} "
            f"| {r['us_score']:.1f} | {r['mb']:.1f} | {r['hit_sources']} |",
            flush=True,
        )
    print(
        f"total {time.perf_counter() - t0:.0f} s; this machine: {dict_update_ns():.0f} ns per dict"
    )
    print("get-and-set (str keys); the us columns scale with it")


if __name__ == "__main__":
    main()
