"""Simple online recommenders to hold the service against, each a learn/recommend pair
replayed by service.tools.replay's walk (`python -m service.tools.replay --baseline NAME ...`).

    baseline = BASELINES["decayed-cooccurrence"]()
    baseline.learn("s1", ["a", "b"], t)             # the session so far; "b" was just clicked
    baseline.recommend("s1", ["a", "b"], t, 20)     # -> up to 20 ids, best first

last-hour-popularity     the items clicked most in the last hour
cooccurrence             items that followed the last click, by count; then last-hour popularity
decayed-cooccurrence     the same with counts decaying at a 1 h half-life, the click before
                         last adding its successors at weight 0.3, the just-clicked item skipped
session-knn              the items of the k most similar recent sessions (overlap with this
                         one's clicks, the latest weighing most), then last-hour popularity

Ties go to the smaller item id, so every answer can be computed by hand. These are the
reference points of docs/online.md (on a real news log: 0.564, 0.579 and 0.622 Recall@20),
not tuned code: each call ranks in plain Python over what it touches.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

HOUR = 3600.0


class Baseline(Protocol):
    def learn(self, session_id: str, clicks: Sequence[str], t: float) -> None:
        """clicks[-1] was clicked at Unix time t after clicks[:-1] (oldest first)."""

    def recommend(self, session_id: str, clicks: Sequence[str], t: float, k: int) -> list[str]:
        """Up to k ids for the click after `clicks`, best first."""


def _best(scores: dict[str, float], k: int, skip: Iterable[str] = ()) -> list[str]:
    """The k ids of highest score (ties: smaller id first), none of `skip`."""
    skipped = set(skip)
    pairs = ((-v, j) for j, v in scores.items() if j not in skipped)
    return [j for _, j in heapq.nsmallest(k, pairs)]


def _fill(first: list[str], fallback: list[str], k: int) -> list[str]:
    """first, then fallback's ids not in it, up to k."""
    seen = set(first)
    return (first + [j for j in fallback if j not in seen])[:k]


class LastHourPopularity:
    """Clicks per item over the last `window_s` seconds (a click at exactly t - window_s has
    left the window)."""

    def __init__(self, window_s: float = HOUR):
        self.window_s = window_s
        self._clicks: deque[tuple[float, str]] = deque()
        self._counts: Counter[str] = Counter()

    def learn(self, session_id: str, clicks: Sequence[str], t: float) -> None:
        self._clicks.append((t, clicks[-1]))
        self._counts[clicks[-1]] += 1

    def _expire(self, t: float) -> None:
        while self._clicks and self._clicks[0][0] <= t - self.window_s:
            _, item = self._clicks.popleft()
            self._counts[item] -= 1
            if not self._counts[item]:
                del self._counts[item]

    def top(self, t: float, k: int, skip: Iterable[str] = ()) -> list[str]:
        self._expire(t)
        return _best(self._counts, k, skip)  # type: ignore[arg-type]

    def recommend(self, session_id: str, clicks: Sequence[str], t: float, k: int) -> list[str]:
        return self.top(t, k)


class Cooccurrence:
    """Next-item counts a -> b over all time; the last click's successors by count, then
    the last hour's most clicked."""

    def __init__(self, window_s: float = HOUR):
        self.popular = LastHourPopularity(window_s)
        self._next: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def learn(self, session_id: str, clicks: Sequence[str], t: float) -> None:
        self.popular.learn(session_id, clicks, t)
        if len(clicks) >= 2:
            self._next[clicks[-2]][clicks[-1]] += 1

    def recommend(self, session_id: str, clicks: Sequence[str], t: float, k: int) -> list[str]:
        successors = self._next.get(clicks[-1]) if clicks else None
        first = _best(successors, k) if successors else []  # type: ignore[arg-type]
        return _fill(first, self.popular.top(t, k + len(first)), k)


class DecayedCooccurrence:
    """Next-item counts decaying at `half_life_s`: score(j) = T(c1, j) + second_weight *
    T(c2, j), T(a, j) = sum over a -> j clicks at times t_i of 2^-((t - t_i) / half_life_s);
    the last click c1 is never proposed; then the last hour's most clicked."""

    def __init__(
        self, half_life_s: float = HOUR, second_weight: float = 0.3, window_s: float = HOUR
    ):
        self.popular = LastHourPopularity(window_s)
        self.rate = 1.0 / half_life_s
        self.second_weight = second_weight
        self._t0: float | None = None
        self._next: defaultdict[str, dict[str, float]] = defaultdict(dict)

    def learn(self, session_id: str, clicks: Sequence[str], t: float) -> None:
        self.popular.learn(session_id, clicks, t)
        if len(clicks) < 2:
            return
        if self._t0 is None:
            self._t0 = t
        # stored as 2^((t - t0) / h): the common factor 2^-((now - t0) / h) is left out
        gain = 2.0 ** ((t - self._t0) * self.rate)
        succ = self._next[clicks[-2]]
        succ[clicks[-1]] = succ.get(clicks[-1], 0.0) + gain

    def recommend(self, session_id: str, clicks: Sequence[str], t: float, k: int) -> list[str]:
        if not clicks:
            return self.popular.top(t, k)
        scores: dict[str, float] = dict(self._next.get(clicks[-1], {}))
        if len(clicks) >= 2 and clicks[-2] != clicks[-1]:
            for j, v in self._next.get(clicks[-2], {}).items():
                scores[j] = scores.get(j, 0.0) + self.second_weight * v
        first = _best(scores, k, skip=clicks[-1:])
        fallback = self.popular.top(t, k + len(first) + 1, skip=clicks[-1:])
        return _fill(first, fallback, k)


class SessionKNN:
    """Online session-KNN: the recent sessions that share an item with this one (the
    `sample` most recent per item), similarity = sum over shared items of 1 / i for the
    session's i-th most recent distinct click; the k most similar vote their similarity
    for each of their items; the last click skipped; then the last hour's most clicked.
    Sessions are remembered by id, at most `max_sessions` (least recently active go)."""

    def __init__(
        self, k: int = 50, sample: int = 200, max_sessions: int = 50_000, window_s: float = HOUR
    ):
        self.k, self.sample, self.max_sessions = k, sample, max_sessions
        self.popular = LastHourPopularity(window_s)
        self._items: OrderedDict[str, set[str]] = OrderedDict()  # session -> its items
        self._by_item: defaultdict[str, deque[str]] = defaultdict(deque)  # newest last

    def learn(self, session_id: str, clicks: Sequence[str], t: float) -> None:
        self.popular.learn(session_id, clicks, t)
        items = self._items.pop(session_id, None) or set()
        self._items[session_id] = items  # now the most recent
        if clicks[-1] not in items:
            items.add(clicks[-1])
            sessions = self._by_item[clicks[-1]]
            sessions.append(session_id)
            if len(sessions) > self.sample:
                sessions.popleft()
        if len(self._items) > self.max_sessions:
            self._items.popitem(last=False)

    def neighbours(self, session_id: str, clicks: Sequence[str]) -> dict[str, float]:
        """Similarity of each candidate neighbour session to `clicks`."""
        weights: dict[str, float] = {}
        for x in reversed(clicks):
            weights.setdefault(x, 1.0 / (len(weights) + 1))
        sims: dict[str, float] = defaultdict(float)
        for x, w in weights.items():
            for other in self._by_item.get(x, ()):
                if other != session_id and other in self._items:
                    sims[other] += w
        return sims

    def recommend(self, session_id: str, clicks: Sequence[str], t: float, k: int) -> list[str]:
        if not clicks:
            return self.popular.top(t, k)
        sims = self.neighbours(session_id, clicks)
        votes: dict[str, float] = defaultdict(float)
        for other in _best(sims, self.k):
            for j in self._items[other]:
                votes[j] += sims[other]
        first = _best(votes, k, skip=clicks[-1:])
        fallback = self.popular.top(t, k + len(first) + 1, skip=clicks[-1:])
        return _fill(first, fallback, k)


BASELINES: dict[str, Callable[[], Baseline]] = {
    "last-hour-popularity": LastHourPopularity,
    "cooccurrence": Cooccurrence,
    "decayed-cooccurrence": DecayedCooccurrence,
    "session-knn": SessionKNN,
}
