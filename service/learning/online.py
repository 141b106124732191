"""Online next-item statistics learnt from every click the service sees: time-decayed
popularity, first- and second-order transitions, and an optional session-KNN.

    model = OnlineModel(OnlineConfig())
    model.learn(["a", "b"], t=1_700_000_000.0)    # the session so far; "b" was just clicked
    ids, scores, sources = model.score(["a", "b"], t=1_700_000_005.0, n=20, exclude={"b"})

A GRU trained up to yesterday cannot recommend today's items; these statistics can, seconds
after an item's first clicks. learn() and score() are a river-style pair: replayed in time
order (score the next click, then learn it) they are the progressive validation that
scripts/bench_online.py runs.

Decay. A statistic is a sum of clicks weighted 2^-(age / half-life). Rather than touch every
entry as time passes, a click at time t adds the gain g(t) = 2^((t - t0) / half-life) (t0: a
reference time), so an entry's decayed value at time u is stored * 2^-((u - t0) / half-life),
the same factor for all: rankings and ratios read straight off the stored values. There are
two clocks, `half_life_s` (popularity) and `transition_half_life_s` (transitions, sessions),
each with its own t0. Once a clock's gain passes 2^RENORM_HALF_LIVES its values are divided
by it, the only work of learn() that grows with the model: with the default half-lives, every
256 h (10.7 days) a pass over every item's popularity (about 50 ms at 100,000 items, on the
machine of bench_online.py's 90-120 ns per dict update), and every 128 days one over every
transition and session (about 0.3 s per 400,000 transitions).

Caps. Two sweeps cycle through the tracked items and through the successor lists, and a
learn() that goes over a cap takes one bounded step of them: of the next SWEEP items it drops
the weakest, of the next SWEEP lists it drops the weakest transitions, as many as the click
added (at most two) or more. So learn() returns within the caps, and no call pays for a pass
over the whole model, which would stall the event loop for seconds at the default caps. What
remains is CPython's own: a dict of n keys rebuilds its table, O(n), about once per n
insertions; the items' two dicts do so together, about 10 ms at 100,000 items.

Score of item j for a session ending ..., c2, c1 (c1 the last click): a mixture of estimates
of P(next = j), each non-negative and summing to at most 1 over j, so score <= sum of weights:

      w_transition  * T(c1, j) / (out(c1) + smoothing)
    + w_transition2 * T(c2, j) / (out(c2) + smoothing)
    + w_knn         * K(j)
    + w_popularity  * P(j) / sum(P)

T(a, j): decayed a -> j transitions (items[-2] -> items[-1] counts 1, items[-3] -> items[-1]
counts skip_weight); out(a): all of a's decayed outgoing mass, trimmed successors included,
so thin or stale evidence shrinks towards 0 (`smoothing` is in decayed clicks). P(j): decayed
clicks on j. K(j): j's share of the votes of the knn_k recent sessions most similar to this
one (V-SKNN style: overlap with the session's last clicks, the latest weighing most, times the
neighbour's recency); sessions are only indexed when w_knn > 0. Candidates are the items these
statistics touch (two successor lists, neighbours' items, the top of popularity), never the
whole catalogue.

Sessions have no id here: a session's KNN record is found again through a hash of its clicks
before the new one. Two open sessions with identical histories share a record until they
diverge, which only blurs their votes a little.
"""

from __future__ import annotations

import heapq
import sys
import threading
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from .items import ItemTable

SOURCE_POPULARITY, SOURCE_TRANSITION, SOURCE_TRANSITION2, SOURCE_KNN = 0, 1, 2, 3
SOURCE_NAMES = ("popularity", "transition", "transition2", "knn")  # index = source code
RENORM_HALF_LIVES = 256.0  # 2^256 ~ 1e77: far from float64 overflow (2^1024)
# what bound_bytes() allows over the caps. learn() returns with items and transitions within
# their caps; successor lists of evicted items wait for the list sweep (at most 1 in SWEEP)
SLACK = 1.25
# items, and successor lists, a sweep step visits: the weakest of 8 is in their bottom 11% on
# average. On bench_online.py's stream with tight caps 8 and 16 scored as the one-pass
# eviction did; 8 costs a learn() over a cap about 10 us
SWEEP = 8

# Sizes for memory_bytes(); containers themselves are measured with sys.getsizeof
_FLOAT = sys.getsizeof(1.0)  # every stored value is its own float object
_KEY = sys.getsizeof(2**62)  # a session key: a 64-bit hash
_RECORD = 48  # a _Session object (sys.getsizeof, slots)
_DEAD: list[str] = []  # the item list of every evicted session record; never appended to
_value = itemgetter(1)


@dataclass(frozen=True)
class OnlineConfig:
    """Knobs of OnlineModel. Caps bound memory (bound_bytes()) and the cost of a call.

    Measured with tracemalloc (test_documented_bytes_per_item_and_per_transition; CPython
    3.11, 8-character ids): 200 bytes per tracked item (its first-seen time and its index
    in the ItemTable included; the index's 50 bytes are shared with the ranker's second
    clock), 158 more once it has successors, 43 per transition; with w_knn > 0, about 390
    per session of 5 clicks.

    Weights, half-lives and smoothing: the best Recall@20 + MRR@20 (0.520, 0.251) of the 54
    runs of `scripts/bench_online.py --sweep` (seed 0, 30,000 sessions over 3 days). That
    stream's related links never change, which favours a long transition memory; replay real
    logs before trusting 12 h (on a real news-portal log, counts decaying over 1 h did best)."""

    half_life_s: float = 3600.0  # popularity: what is read this hour
    # a -> b evidence is sparse: on the bench, 12 h gave 0.520/0.251, 4 h 0.511/0.241, 1 h
    # 0.479/0.218 (Recall@20/MRR@20)
    transition_half_life_s: float = 43200.0
    max_items: int = 100_000  # items tracked; the least clicked (decayed) go first
    max_transitions: int = 1_000_000  # a -> b pairs over all items; the weakest go first
    # per item; a list reaching twice this keeps its strongest. On the bench 40 scored the
    # same Recall@20 and MRR@20, 10 lost 0.002 Recall@20
    max_successors: int = 20
    max_sessions: int = 50_000  # recent sessions indexed for KNN; the least recent go first
    session_items: int = 10  # last distinct clicks of a session kept as its item set
    sessions_per_item: int = 30  # most recent sessions looked up per query click
    knn_query_items: int = 3  # last distinct clicks of the scored session that find neighbours
    knn_k: int = 20  # neighbours that vote
    # top popular items kept sorted (grows to twice this); the only popularity-only
    # candidates, so n + |exclude| beyond it gets fewer of them rather than a scan of all items
    popular_candidates: int = 50
    # learn: items[-3] -> items[-1] counts this much (0 or 0.5: the same on the churn bench;
    # 0 cost the ranker 1.4% MRR@20 on stable data in scripts/bench_freshness.py)
    skip_weight: float = 0.5
    # decayed clicks added to out(a): 4 fresh clicks of a -> b give b half of w_transition
    smoothing: float = 4.0
    w_transition: float = 1.0  # the scale the other weights are relative to
    w_transition2: float = 0.1  # the click before last: a weak second-order hint
    # off: on the bench +0.003 Recall@20, -0.002 MRR@20, for 4x the time of a score() and
    # 4x the memory
    w_knn: float = 0.0
    w_popularity: float = 1.0  # fills the list and breaks ties between thin transitions

    def __post_init__(self) -> None:
        problems = []
        for name in ("half_life_s", "transition_half_life_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0 seconds")
        caps = ("max_items", "max_transitions", "max_successors", "max_sessions")
        sizes = ("session_items", "sessions_per_item", "knn_query_items", "knn_k")
        for name in (*caps, *sizes, "popular_candidates"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        weights = ("w_transition", "w_transition2", "w_knn", "w_popularity", "skip_weight")
        for name in (*weights, "smoothing"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                problems.append(f"{name}={getattr(self, name)} must be >= 0 (0 turns it off)")
        if problems:
            raise ValueError("invalid online configuration: " + "; ".join(problems))

    def bound_bytes(self, id_chars: int = 16) -> int:
        """Most bytes OnlineModel can hold under these caps for ASCII ids of up to `id_chars`
        characters: every structure at SLACK x its cap, every container just grown."""
        slot = 120  # worst bytes per entry of a big dict just after it grew (3.11)
        item = sys.getsizeof("x" * id_chars) + 3 * slot + 2 * _FLOAT
        item += 2 * 9  # its places in the two sweeps: a pointer in a deque block of 64
        item += sys.getsizeof({"x": 1.0})  # its successor dict, without entries
        # its index in the ItemTable (dict slot, three list slots and the int) and in the
        # two arrays by index, each list and array just doubled
        item += slot + 2 * 3 * 8 + _KEY + 2 * 2 * 8
        succ = [sys.getsizeof(dict.fromkeys(map(str, range(n)), 0.0)) for n in range(1, 90)]
        transition = _FLOAT + max((b - succ[0]) / n for n, b in enumerate(succ[1:], 1))
        transition += sys.getsizeof("x" * id_chars)  # one into an evicted item keeps its id
        total = SLACK * (self.max_items * item + self.max_transitions * transition)
        if self.w_knn > 0:  # index lists, the dead records they hold, live sessions
            spi = 2 * self.sessions_per_item
            index = slot + sys.getsizeof([None] * spi) + spi * _RECORD
            session = _RECORD + sys.getsizeof([None] * self.session_items) + 2 * slot + _KEY
            total += SLACK * self.max_items * index + self.max_sessions * session
        return int(total)


class _Session:
    """A recent session: its last distinct clicks and the transition-clock gain at its last
    click. An evicted record keeps the shared empty _DEAD list until index lists drop it."""

    __slots__ = ("items", "gain")

    def __init__(self, gain: float) -> None:
        self.items: list[str] = []
        self.gain = gain


def _scale(table: dict[str, float], f: float) -> None:
    """Multiply every value of table by f, in C: the values are replaced in place."""
    table.update(zip(table, map(f.__mul__, table.values()), strict=True))


def _key(items: Sequence[str], n_items: int, window: int) -> int:
    """Hash of a session's first n_items clicks (their last `window`, and the count)."""
    return hash((n_items, tuple(items[max(0, n_items - window) : n_items])))


class OnlineModel:
    """Decayed popularity, transitions and session-KNN, learnt one click at a time.

    Thread-safe (one lock). Work per call is bounded by the configuration, not the model's
    size: learn() touches the click's entries and one sweep step, score() only candidates;
    the one exception is the renormalisation every 256 half-lives (module docstring)."""

    def __init__(self, config: OnlineConfig | None = None, table: ItemTable | None = None):
        self.config = c = config or OnlineConfig()
        # tracked items hold an index in `table` (shared with the ranker's other clock and
        # the model's vocabulary), under which popularity and first-click times are also
        # kept as arrays, for the ranker's batch lookups (popularity_of(), born_of())
        self._owns_table = table is None
        self.table = ItemTable() if table is None else table
        self._pop_at = np.zeros(0)  # (capacity,) _pop by table index; 0: not tracked
        # (capacity,) Unix time of each tracked item's first click tracked, by table index;
        # NaN: not tracked
        self._born_at = np.zeros(0)
        self._top_rows = np.zeros(0, np.int64)  # table indices of _top_order, once asked for
        self._top_rows_stale = True
        self._lock = threading.Lock()
        self._rates = (1.0 / c.half_life_s, 1.0 / c.transition_half_life_s)  # per second
        self._t0: list[float] = []  # reference times of the two clocks; set by the first learn
        self._pop: dict[str, float] = {}  # item -> decayed clicks (popularity clock)
        self._pop_total = 0.0
        self._top: dict[str, float] = {}  # a superset of the popular_candidates most popular
        self._top_order: list[str] = []  # _top's keys, most popular first
        self._top_floor = 0.0  # no item outside _top is more popular than this
        self._items_sweep: deque[str] = deque()  # every tracked item once, next to visit first
        self._succ: dict[str, dict[str, float]] = {}  # a -> {b: decayed a -> b}
        # every key of _succ once. Lists are only deleted by this sweep, so that one deleted
        # and made again before the sweep came round could not be in it twice
        self._lists_sweep: deque[str] = deque()
        self._out: dict[str, float] = {}  # a -> all decayed a -> * mass, trimmed included
        self._n_transitions = 0
        self._sessions: OrderedDict[int, _Session] = OrderedDict()  # least recent first
        self._index: dict[str, list[_Session]] = {}  # item -> its sessions, least recent first
        self._nested_bytes = 0  # getsizeof of successor dicts, index lists, session records
        # one string object per id, however many requests repeat it: the table's
        self._str_bytes = 0  # getsizeof of the tracked ids

    # --- learn ---

    def learn(self, items: Sequence[str], t: float) -> None:
        """Learn the click items[-1] at Unix time t (seconds), made after items[:-1] (the same
        session's earlier clicks, oldest first). Raises ValueError for no items."""
        if not items:
            raise ValueError("learn() needs the session's clicks, the new one last")
        c = self.config
        with self._lock:
            g_pop, g = self._gains(t)
            x = self._canonical(items[-1])
            self._add_click(x, g_pop, t)
            # an untracked (evicted) previous click teaches nothing: only tracked items gain
            # transitions (an evicted item's list waits for the list sweep to drop it)
            if len(items) >= 2 and items[-2] in self._pop:
                self._add_transition(self._canonical(items[-2]), x, g)
            if len(items) >= 3 and c.skip_weight > 0 and items[-3] in self._pop:
                self._add_transition(self._canonical(items[-3]), x, g * c.skip_weight)
            if c.w_knn > 0:
                self._add_to_session(items, x, g)
            over_items = len(self._pop) > c.max_items
            if over_items:
                self._evict_item()
            if over_items or self._n_transitions > c.max_transitions:
                self._sweep_lists()

    def _canonical(self, item: str) -> str:
        """The table's string object for item when it has one (tracked here, by the other
        clock or in the model's vocabulary), else item itself."""
        i = self.table.get(item)
        return self.table.ids[i] if i >= 0 else item

    def _gains(self, t: float) -> tuple[float, float]:
        """What a click at t adds on the popularity clock and on the transition clock,
        renormalising a clock first when its gain grows too large."""
        if not self._t0:
            self._t0 = [t, t]
        e_pop = (t - self._t0[0]) * self._rates[0]
        e_tr = (t - self._t0[1]) * self._rates[1]
        if e_pop > RENORM_HALF_LIVES:
            self._rescale_popularity(2.0**-e_pop)
            self._t0[0], e_pop = t, 0.0
        if e_tr > RENORM_HALF_LIVES:
            self._rescale_transitions(2.0**-e_tr)
            self._t0[1], e_tr = t, 0.0
        return 2.0**e_pop, 2.0**e_tr

    def _add_click(self, x: str, g: float, t: float) -> None:
        old = self._pop.get(x)
        if old is None:
            self._str_bytes += sys.getsizeof(x)
            self._items_sweep.append(x)
            i = self.table.acquire(x)
            if i >= len(self._pop_at):
                self._grow(i + 1)
            self._born_at[i] = t
        else:
            i = self.table.get(x)
        v = self._pop[x] = self._pop_at[i] = (old or 0.0) + g
        self._pop_total += g
        if x in self._top:
            self._top_rows_stale = True
            self._top[x] = v
            self._promote(x, v, self._top_order.index(x))
        elif v > self._top_floor:
            self._top_rows_stale = True
            self._top[x] = v
            self._top_order.append(x)
            self._promote(x, v, len(self._top_order) - 1)
            if len(self._top) > 2 * self.config.popular_candidates:
                del self._top_order[self.config.popular_candidates :]
                self._top = {j: self._top[j] for j in self._top_order}
                self._top_floor = self._top[self._top_order[-1]]

    def _grow(self, n: int) -> None:
        """Room in the index arrays for table indices below n (doubling: amortised O(1))."""
        size = max(n, 2 * len(self._pop_at), 64)
        pop, born = np.zeros(size), np.full(size, np.nan)
        pop[: len(self._pop_at)] = self._pop_at
        born[: len(self._born_at)] = self._born_at
        self._pop_at, self._born_at = pop, born

    def _promote(self, x: str, v: float, i: int) -> None:
        """Move x, at position i of _top_order, up to its place after every item above it
        at least as popular (order[:i] stays sorted: popularity only grows, and rescaling
        keeps the order). A binary search, not a walk: with a large catalogue clicked
        evenly, an item's first click outranks every single-click item in the list, up to
        2 x popular_candidates places (a walk took ~20 us per click in bench_service)."""
        order, top = self._top_order, self._top
        j = bisect_right(order, -v, 0, i, key=lambda item: -top[item])
        if j < i:
            del order[i]
            order.insert(j, x)

    def _add_transition(self, a: str, b: str, w: float) -> None:
        succ = self._succ.get(a)
        if succ is None:
            succ = self._succ[a] = {}
            self._nested_bytes += sys.getsizeof(succ)
            self._lists_sweep.append(a)
        old = succ.get(b)
        if old is None:
            size = sys.getsizeof(succ)
            succ[b] = w
            self._nested_bytes += sys.getsizeof(succ) - size
            self._n_transitions += 1
        else:
            succ[b] = old + w
        self._out[a] = self._out.get(a, 0.0) + w
        if len(succ) >= 2 * self.config.max_successors:
            keep = heapq.nlargest(self.config.max_successors, succ.items(), key=_value)
            self._replace_successors(a, dict(keep))

    def _replace_successors(self, a: str, keep: dict[str, float]) -> None:
        """a's successor list becomes `keep`, a new dict: one built by insertion is sized to
        its entries, where a dict emptied in place keeps its table. {} drops a's list, and
        is for the list sweep alone: a's place in it is the one it is visiting."""
        old = self._succ[a]
        self._nested_bytes -= sys.getsizeof(old)
        self._n_transitions -= len(old) - len(keep)
        if keep:
            self._succ[a] = keep
            self._nested_bytes += sys.getsizeof(keep)
        else:
            del self._succ[a], self._out[a]

    def _add_to_session(self, items: Sequence[str], x: str, g: float) -> None:
        c = self.config
        n = len(items)
        rec = self._sessions.pop(_key(items, n - 1, c.session_items), None) if n > 1 else None
        if rec is None:
            rec = _Session(g)
            self._nested_bytes += _RECORD + sys.getsizeof(rec.items)
        rec.gain = g
        self._sessions[_key(items, n, c.session_items)] = rec  # now the most recent
        if x not in rec.items:
            size = sys.getsizeof(rec.items)
            rec.items.append(x)
            if len(rec.items) > c.session_items:
                del rec.items[0]
            sessions = self._index.get(x)
            if sessions is None:
                sessions = self._index[x] = []
            size += sys.getsizeof(sessions)
            sessions.append(rec)
            if len(sessions) >= 2 * c.sessions_per_item:
                del sessions[: -c.sessions_per_item]
            self._nested_bytes += sys.getsizeof(rec.items) + sys.getsizeof(sessions) - size
        if len(self._sessions) > c.max_sessions:
            _, old = self._sessions.popitem(last=False)
            self._nested_bytes -= _RECORD + sys.getsizeof(old.items)
            old.items = _DEAD

    # --- eviction (a bounded step per learn() over a cap) and renormalisation ---

    def _evict_item(self) -> None:
        """Drop the weakest of the next SWEEP items. Its successor list stays (scored, not
        learnt into unless the item is clicked again) until the list sweep comes round to
        it; transitions *into* it stay until their lists drop them."""
        sweep = self._items_sweep
        visited = [sweep.popleft() for _ in range(min(SWEEP, len(sweep)))]
        x = min(visited, key=self._pop.__getitem__)
        visited.remove(x)
        sweep.extend(visited)  # to the back: every item is visited once per cycle
        self._pop_total = max(self._pop_total - self._pop.pop(x), 0.0)
        i = self.table.get(x)
        self._pop_at[i], self._born_at[i] = 0.0, np.nan
        self.table.release(i)
        self._str_bytes -= sys.getsizeof(x)
        sessions = self._index.pop(x, None)
        if sessions is not None:
            self._nested_bytes -= sys.getsizeof(sessions)
        if self._top.pop(x, None) is not None:
            self._top_order.remove(x)
            self._top_rows_stale = True

    def _sweep_lists(self) -> None:
        """Visit the next SWEEP successor lists: drop those of evicted items and, while
        transitions are over max_transitions by k, weak transitions of the rest. The k
        lists whose weakest transition is weakest lose every transition at or below the
        largest of their k minima: at least k go (fewer only if fewer lists are visited),
        none stronger than the weakest of a visited list that keeps all of its own."""
        sweep, succ_of = self._lists_sweep, self._succ
        lists = []
        for _ in range(min(SWEEP, len(sweep))):
            a = sweep.popleft()
            if a in self._pop:
                lists.append(a)
            else:
                self._replace_successors(a, {})
        k = self._n_transitions - self.config.max_transitions  # what this click added: <= 2
        if k > 0 and lists:
            weakest = sorted([(min(succ_of[a].values()), a) for a in lists])[:k]  # ties: by id
            threshold = weakest[-1][0]
            for _, a in weakest:
                self._replace_successors(a, {b: w for b, w in succ_of[a].items() if w > threshold})
            lists = [a for a in lists if a in succ_of]
        sweep.extend(lists)  # to the back: every list is visited once per cycle

    def _rescale_popularity(self, f: float) -> None:
        _scale(self._pop, f)
        self._top = {x: self._pop[x] for x in self._top}  # share the rescaled floats again
        self._pop_at *= f  # the same products as _scale's: the arrays stay equal to the dicts
        self._pop_total *= f
        self._top_floor *= f

    def _rescale_transitions(self, f: float) -> None:
        _scale(self._out, f)
        for succ in self._succ.values():
            _scale(succ, f)
        for rec in self._sessions.values():
            rec.gain *= f

    # --- score ---

    def score(
        self,
        items: Sequence[str],
        t: float,
        n: int,
        exclude: Collection[str] = (),
        with_sources: bool = True,
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Candidates for the click after `items` (the session so far, oldest first, may be
        empty; unknown ids are fine) at Unix time t: up to n ids best first, their scores (n,)
        float32 (the mixture in the module docstring: >= 0, higher better) and sources (n,)
        int8, the statistic contributing most to each (SOURCE_NAMES[code]). Never returns an
        id in `exclude`. Changes nothing. with_sources=False skips working out the sources
        (all 0), which costs more than the scoring itself."""
        if n <= 0:
            return [], np.zeros(0, np.float32), np.zeros(0, np.int8)
        with self._lock:
            parts = self._parts(items, t)
            # scores are kept in units of the first part's coefficient, so that its candidate
            # list is copied at C speed instead of scaled item by item
            base = parts[0][2] if parts else 1.0
            comb = dict(parts[0][1]) if parts else {}
            for _, table, k in parts[1:]:
                r, get = k / base, comb.get
                for j, v in table.items():
                    comb[j] = get(j, 0.0) + v * r
            total = self._pop_total
            coef_pop = self.config.w_popularity / total if total > 0 else 0.0
            if coef_pop:
                comb = self._with_popularity(comb, coef_pop / base, n + len(exclude))
            for x in exclude:
                comb.pop(x, None)
            if len(comb) > 1000:  # a C sort beats a Python heap below that
                best = heapq.nlargest(n, comb.items(), key=_value)
            else:
                best = sorted(comb.items(), key=_value, reverse=True)[:n]
            ids = [j for j, _ in best]
            if with_sources:
                sources = self._sources(ids, parts, coef_pop)
            else:
                sources = np.zeros(len(ids), np.int8)
        scores = np.array([v for _, v in best], np.float64) * base
        return ids, scores.astype(np.float32), sources

    def _parts(self, items: Sequence[str], t: float) -> list[tuple[int, dict[str, float], float]]:
        """(source, {item: stored value}, coefficient) of each non-empty statistic other than
        popularity; value x coefficient is the item's term in the mixture."""
        c = self.config
        idle = (t - self._t0[1]) * self._rates[1] if self._t0 else 0.0
        mu = c.smoothing * 2.0 ** min(idle, 1000.0)  # 1000: no overflow after a long idle
        parts = []
        for code, back, w in (
            (SOURCE_TRANSITION, 1, c.w_transition),
            (SOURCE_TRANSITION2, 2, c.w_transition2),
        ):
            if len(items) < back or w <= 0 or (back == 2 and items[-2] == items[-1]):
                continue  # a repeated click adds nothing as the click before last
            succ = self._succ.get(items[-back])
            if succ and self._out[items[-back]] + mu > 0:  # 0 only if it all underflowed
                parts.append((code, succ, w / (self._out[items[-back]] + mu)))
        if items and c.w_knn > 0:
            votes, k = self._knn_votes(items)
            if k > 0:
                parts.append((SOURCE_KNN, votes, k))
        return parts

    def _with_popularity(
        self, comb: dict[str, float], coef: float, prefix: int
    ) -> dict[str, float]:
        """comb plus coef x popularity for its items and for the `prefix` most popular."""
        pop_get = self._pop.get
        comb = {j: v + coef * pop_get(j, 0.0) for j, v in comb.items()}
        # a popularity-only candidate below the first n + |exclude| popular cannot make it;
        # past the sorted list none is offered, as finding them would scan every item
        for j in self._top_order[:prefix]:
            if j not in comb:
                comb[j] = coef * self._pop[j]
        return comb

    def _sources(self, ids: list[str], parts: list, coef_pop: float) -> np.ndarray:
        """(len(ids),) int8: the source code of each item's largest term."""
        pop_get = self._pop.get
        codes = []
        for j in ids:
            best, code = coef_pop * pop_get(j, 0.0), SOURCE_POPULARITY
            for source, table, k in parts:
                v = k * table.get(j, 0.0)
                if v > best:
                    best, code = v, source
            codes.append(code)
        return np.array(codes, np.int8)

    def _knn_votes(self, items: Sequence[str]) -> tuple[dict[str, float], float]:
        """Item votes of the nearest recent sessions, and the coefficient that turns a vote
        into w_knn x the item's share of all votes."""
        c = self.config
        n = len(items)
        own = (
            self._sessions.get(_key(items, n, c.session_items)),
            self._sessions.get(_key(items, n - 1, c.session_items)) if n > 1 else None,
        )
        sims: dict[_Session, float] = {}
        get = sims.get
        seen: set[str] = set()
        for x in reversed(items):  # the latest click weighs 1, the one before 1/2, ...
            if x in seen:
                continue
            w = 1.0 / (len(seen) + 1)
            seen.add(x)
            for rec in self._index.get(x, ())[-c.sessions_per_item :]:
                sims[rec] = get(rec, 0.0) + w * rec.gain
            if len(seen) == c.knn_query_items:
                break
        for mine in own:
            if mine is not None:
                sims.pop(mine, None)
        neighbours = heapq.nlargest(c.knn_k, sims.items(), key=_value)
        votes: dict[str, float] = {}
        vget = votes.get
        mass = 0.0
        for rec, s in neighbours:
            for j in rec.items:
                votes[j] = vget(j, 0.0) + s
            mass += s * len(rec.items)
        return votes, (c.w_knn / mass if mass > 0 else 0.0)

    # --- per-candidate statistics, for service/learning/ranker.py ---

    def popular_rows(self, n: int) -> np.ndarray:
        """(<= n,) table indices of the n most popular items, most popular first."""
        with self._lock:
            if self._top_rows_stale or len(self._top_rows) != min(n, len(self._top_order)):
                self._top_rows = self.table.find(self._top_order[:n])
                self._top_rows_stale = False
            return self._top_rows

    def successors_many(
        self, sessions: Sequence[Sequence[str]], ts: Sequence[float]
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
        """The successor lists of every session's last and second-last click, for a batch
        of calls (session i at Unix time ts[i]), one after the other: their ids (m,), each
        entry's row (m,) int64: 0 from the last click, 1 from the one before, its share
        (m,) float64: T(c, j) / (out(c) + smoothing), the module docstring's term without
        its weight (0 where the term is left out: a repeated click as the one before last),
        and cuts (len(sessions) + 1,): session i's entries are cuts[i] to cuts[i + 1].
        Changes nothing."""
        ids: list[str] = []
        values: list[float] = []
        lists: list[tuple[int, float, int]] = []  # (row, out(c) + smoothing, length)
        cuts = [0]
        with self._lock:
            for items, t in zip(sessions, ts, strict=True):
                idle = (t - self._t0[1]) * self._rates[1] if self._t0 else 0.0
                mu = self.config.smoothing * 2.0 ** min(idle, 1000.0)
                for back in (1, 2):
                    succ = self._succ.get(items[-back]) if len(items) >= back else None
                    if succ:
                        share = self._out[items[-back]] + mu
                        if share <= 0 or (back == 2 and items[-2] == items[-1]):
                            share = np.inf  # all underflowed, or a repeated click: no term
                        ids.extend(succ)
                        values.extend(succ.values())
                        lists.append((back - 1, share, len(succ)))
                cuts.append(len(ids))
        rows, shares, lengths = zip(*lists, strict=True) if lists else ((), (), ())
        values_m = np.fromiter(values, np.float64, len(values)) / np.array(shares).repeat(lengths)
        return ids, np.array(rows, np.int64).repeat(lengths), values_m, cuts

    def popularity_of(self, rows: np.ndarray) -> np.ndarray:
        """(n,) float64 P(j) / P(most popular) in [0, 1] of table indices `rows` (0 for
        an item not tracked, or an index past the table: a batch's ids without one)."""
        with self._lock:
            top = self._pop[self._top_order[0]] if self._top_order else 0.0
            if top <= 0:
                return np.zeros(len(rows))
            values = self._pop_at.take(rows, mode="clip")
            values[rows >= len(self._pop_at)] = 0.0
            return values / top

    def born_of(self, rows: np.ndarray) -> np.ndarray:
        """(n,) float64 Unix time of each item's first click tracked (NaN: not tracked)."""
        with self._lock:
            if not len(self._born_at):
                return np.full(len(rows), np.nan)
            values = self._born_at.take(rows, mode="clip")
            values[rows >= len(self._born_at)] = np.nan
            return values

    # --- size ---

    def stats(self) -> dict[str, int]:
        """Counts of what is held: items, items with successors, transitions, sessions."""
        with self._lock:
            return {
                "items": len(self._pop),
                "sources": len(self._succ),
                "transitions": self._n_transitions,
                "sessions": len(self._sessions),
            }

    def memory_bytes(self) -> int:
        """Estimated bytes held (O(1); tests check it against tracemalloc within 25%)."""
        with self._lock:
            tables: list[object] = [self._pop, self._out, self._succ]
            tables.append(self._index)
            tables += [self._sessions, self._items_sweep, self._lists_sweep]
            floats = len(self._pop) + len(self._out) + self._n_transitions
            return (
                sum(map(sys.getsizeof, tables))
                + sys.getsizeof(self._top)
                + sys.getsizeof(self._top_order)
                + self._nested_bytes
                + self._str_bytes
                + _FLOAT * floats
                + _KEY * len(self._sessions)
                + self._pop_at.nbytes
                + self._born_at.nbytes
                + (self.table.memory_bytes() if self._owns_table else 0)
            )
