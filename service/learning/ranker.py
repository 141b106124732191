"""Stage 4 (default scorer): a linear ranker over per-candidate features, its weights learnt
online from each session's next click.

    ranker = OnlineRanker(layer_statistics, RankerConfig())
    ranker.learn(clicks, now)                                   # the second clock's counts
    ids, scores, sources = ranker.rank(model_part, clicks, now, k, exclude, stale, "s1")
    ranker.feedback("s1", n_clicks, clicked)                    # when s1's next click comes
    ranker.report()     # {"weights": {...}, "hit_rate": {...}, "updates": ..., ...}

Why. An additive mixture of probability estimates (the old blend) lets popularity, whose
estimate is spread over every item, drown the transitions of the last click on news traffic,
and a fixed model weight cannot suit both a news site (a third of next clicks on items the
model cannot know, no repeats) and a shop (the model knows nearly everything, a quarter of
next clicks repeat the last one). Every answer is followed by the session's next click, so
the service can learn which evidence predicts it, per deployment, continuously.

Candidates: the model's top max(`model_candidates`, k) items (so a top_k of 1,000 gets
1,000), the successors of the last and second-last click on both clocks, the `popular` most
popular on both, and the session's own last clicks. Features, one row per candidate, all in
[0, 1] (FEATURES); evidence on a log scale (log_scale(): ln(1 + v / floor) / ln(1 + 1 /
floor)), so a linear score is a product of evidence, as a back-off's ratios are:

    model_logp, model_logp_stale  (log p + 10) / 10 clipped to [0, 1], p the model's softmax
                                  over its candidates; the _stale column instead when the
                                  session's last click is unknown to the model; 0 if unranked
    model_p                       that p
    transition_fast/_slow         T(c1, j) / (out(c1) + smoothing) on the 1 h / 12 h clock,
                                  log scale with floor 0.01
    transition2_fast/_slow        the same from the click before last
    popularity_fast/_slow         P(j) / P(most popular) on the 30 min / 1 h clock, log
                                  scale with floor 0.001
    trend                         log2 of j's fast over slow popularity share, clipped to
                                  [-4, 4] / 4: rising or fading
    freshness                     2^-(age / 6 h), age since the item's first click seen
    clicked, last_click           j is one of the session's clicks / is the last one

Score = features @ weights. The weights start at PRIOR (a back-off: the model, then the
last click's transitions, then popularity) and move by listwise SGD: on the next click x of
a session, with p the softmax of the scores over the rows kept of the answer that session
was given, w += lr * (f_x - sum_n p_n f_n) - lr * l2 * (w - PRIOR), the gradient of log
p_x. Pairwise (BPR) steps against the rows ranked above x, tried first, flattened every
weight towards 0 on news, where many next clicks have no evidence at all (the weights of a
pairwise loss only ever shrink on those); the softmax's likelihood stops at a calibrated
sharpness (news scale 0.5, the first 12 test hours: Recall@20 / MRR@20 0.725 / 0.274
against 0.700 / 0.250 with pairwise steps over the same features). Skipping
already-clicked items is thus a learnt weight (news: strongly negative; shops: the last
click comes back often), not a flag.

Each answer keeps, until its session's next click, the rows of its top `keep` candidates,
of every source's top 20, of the session's clicks and `samples` random others (int16:
every feature lies in [-1, 1], kept to 1 / 32767).
Sources' running hit rates (share of next clicks a source had in its top 20: an exponential
average over about `hit_window` next clicks) come from the same rows.

Cost: rank_many() works on the whole batch in numpy. Items are ItemTable indices (items.py,
shared by both clocks and the model's vocabulary), pools are int arrays (pools.py), the
features one (13, N) matrix, the rankings one sort of a (calls, largest pool) grid; ids go
back to strings only for the k answered and the rows kept.

Gaming: only clicks that OnlineLayer.learn() receives give feedback (the service's guard
decides which), each answer teaches at most once, a session teaches at most
`max_updates_per_session` updates, the weights stay at the prior until `min_teachers`
clients have given feedback, and then no client takes more than 1 / min_teachers of the
last `teacher_window` steps: one client cannot steer the weights far.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise

import numpy as np

from .items import ItemTable
from .online import OnlineConfig, OnlineModel
from .pools import BatchIds, Pool

FEATURES = (
    "model_logp",
    "model_logp_stale",
    "model_p",
    "transition_fast",
    "transition_slow",
    "transition2_fast",
    "transition2_slow",
    "popularity_fast",
    "popularity_slow",
    "trend",
    "freshness",
    "clicked",
    "last_click",
)
_F = {name: i for i, name in enumerate(FEATURES)}
# start weights: a back-off on log evidence. The model first (shops and stable catalogues,
# where it is strong, then only have to confirm it), then the last click's transitions,
# the click before last's, popularity; news traffic learns the model down within hours
PRIOR = {
    "model_logp": 3.0,
    "model_logp_stale": 1.0,
    "transition_fast": 2.0,
    "transition_slow": 1.0,
    "transition2_fast": 0.5,
    "transition2_slow": 0.3,
    "popularity_fast": 1.0,
    "popularity_slow": 0.5,
}
# sources whose hit rate is tracked: the candidates' top 20 by these columns (summed), and
# the ranker's own answer
SOURCES = {
    "model": ("model_logp", "model_logp_stale"),
    "transition": ("transition_fast", "transition_slow"),
    "transition2": ("transition2_fast", "transition2_slow"),
    "popularity_fast": ("popularity_fast",),
    "popularity_slow": ("popularity_slow",),
}
RANKER = "ranker"
# the popularity sources by clock (OnlineRanker.first: 1 h, second: 30 min)
_POPULAR = [list(SOURCES).index("popularity_slow"), list(SOURCES).index("popularity_fast")]
LOGP_RANGE = 10.0  # log p below -10 (p < 4.5e-5) counts as unranked
FRESH_S = 6 * 3600.0  # freshness halves every 6 h of an item's age
TOP = 20  # a source "has" the next click when it is in its top 20
# log-scale floors: a share below them counts as no evidence (feature 0), 1 is feature 1
SHARE_FLOOR = 1e-2  # transitions: T(c, j) / (out(c) + smoothing)
POPULARITY_FLOOR = 1e-3  # popularity: P(j) / P(most popular)
# the six log-scale columns are adjacent (four transition shares, two popularity shares):
# features() scales them with one log1p over the block (log_scale() row by row: the
# features are built feature-major, one row per feature)
_EVIDENCE = slice(_F["transition_fast"], _F["popularity_slow"] + 1)
_FLOORS = np.array([SHARE_FLOOR] * 4 + [POPULARITY_FLOOR] * 2)[:, None]  # (6, 1)
_LOG_NORM = np.log1p(1.0 / _FLOORS)  # (6, 1)
# trend is log2 of (fast + floor) / (slow + floor) popularity, read off the log-scale columns:
# with the floor at POPULARITY_FLOOR it is their difference times ln(1 + 1 / floor) / ln 2
_TREND = math.log1p(1.0 / POPULARITY_FLOOR) / math.log(2.0) / 4.0  # then clipped to [-1, 1]
# kept rows are int16: every feature is in [-1, 1] (a conversion to float16 cost 4x as much)
_ROW_SCALE = 32767.0


def log_scale(v: np.ndarray, floor: float) -> np.ndarray:
    """v in [0, 1] -> log(v + floor) mapped to [0, 1] (0 at v = 0, 1 at v = 1): a linear
    score over such features is a product of evidence, as a back-off's ratios are."""
    return np.log1p(v / floor) / math.log1p(1.0 / floor)


@dataclass(frozen=True)
class RankerConfig:
    """Knobs of OnlineRanker. Memory: at most pending_answers answers of about
    (keep + 20 x sources + samples) rows of 13 int16 features, ~3-4 KB each (a probe
    measured 3.5 KB of RSS per answer; OnlineLayer.size() counts them)."""

    # the second clock's statistics (the layer's OnlineModel has 1 h popularity, 12 h
    # transitions): transitions of this hour, popularity of this half hour (what a news
    # portal's readers click now; a real portal's log did best with 30 min)
    fast_transition_half_life_s: float = 3600.0
    fast_popularity_half_life_s: float = 1800.0
    fast_smoothing: float = 1.0  # decayed clicks added to out(c1) on the fast clock
    # the model's best items the service asks it for (its TopK) and the softmax behind
    # model_logp and model_p runs over; with `popular`, what a call's pool costs. 40 and 20
    # (scripts/bench_freshness.py): news 0.6976 / 0.3490, shop 0.7394 / 0.4037, stable
    # 0.7240 / 0.4020 (Recall@20 / MRR@20) against 0.6958 / 0.3488, 0.7387 / 0.4036,
    # 0.7252 / 0.4019 with 50 and 30; 30 and 20 took stable's MRR@20 to 0.4015, 0.9% below
    # the frozen model's (BlendConfig.candidates: the mixture's)
    model_candidates: int = 40
    popular: int = 20  # most popular items per clock added to the candidates
    session_clicks: int = 5  # the session's last clicks added to the candidates
    learning_rate: float = 0.05
    l2: float = 1e-4  # pull towards PRIOR per update
    negatives: int = 8  # rows ranked above the click that it is compared with
    keep: int = 24  # top rows of an answer kept for its feedback
    samples: int = 8  # random other rows kept, so low-ranked evidence learns too
    pending_answers: int = 20_000  # answers awaiting their next click (LRU)
    max_updates_per_session: int = 50
    # the weights stay at the prior until this many distinct clients (x-client-id, else
    # session ids) have given feedback: on a fresh or quiet server five clients within the
    # guard's caps moved popularity_slow from 0.5 to 0.19 in 26 updates. Learning later
    # costs (scripts/bench_freshness.py, stable MRR@20): 0.4017 at 20, 0.4007 at 50 (out of
    # 1% of the frozen model's 0.4051), 0.4020 at 1
    min_teachers: int = 20
    # and afterwards no teacher takes more than 1 / min_teachers of the last teacher_window
    # steps: once the gate was open, one client within the guard's caps sending [y, target]
    # from fresh sessions took every step of a quiet server and put target first after
    # every item in 20 minutes (a session's own max_updates_per_session stay within it)
    teacher_window: int = 1000
    hit_window: int = 1000  # next clicks the running hit rates average over
    prior: dict[str, float] = field(default_factory=lambda: dict(PRIOR))

    def __post_init__(self) -> None:
        unknown = set(self.prior) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features in prior: {sorted(unknown)}; known: {FEATURES}")
        if self.learning_rate < 0 or self.l2 < 0:
            raise ValueError("learning_rate and l2 must be >= 0")
        sizes = ("popular", "negatives", "keep", "pending_answers", "hit_window", "min_teachers",
                 "teacher_window")  # fmt: skip
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    def second_clock(self, first: OnlineConfig) -> OnlineConfig:
        """The fast-transition, slow-popularity statistics beside `first` (same caps)."""
        return OnlineConfig(
            half_life_s=self.fast_popularity_half_life_s,
            transition_half_life_s=self.fast_transition_half_life_s,
            smoothing=self.fast_smoothing,
            max_items=first.max_items,
            max_transitions=first.max_transitions,
            max_successors=first.max_successors,
            popular_candidates=max(first.popular_candidates, self.popular),
        )


@dataclass(slots=True)
class _Answer:
    """What an answer keeps for its feedback: rows' ItemTable indices (r,) noted at the
    table's `generation` with the ids of those that had none (by place), features (r, F)
    int16 (times _ROW_SCALE), source bitmask (r,) (bit s: in source s's top 20; the last
    bit: in the answer's top 20), and the session length it answered. Ids stay indices
    until a next click is looked up: most rows are never asked for."""

    rows: np.ndarray
    generation: int
    extra: dict[str, int]
    x: np.ndarray
    mask: np.ndarray
    n_clicks: int
    updates: int = 0

    @property
    def nbytes(self) -> int:
        """Its memory, estimated: the arrays' data, their headers (~112 bytes each), the
        extra ids (~100 bytes each), the record and its entry under a session id."""
        data = self.rows.nbytes + self.x.nbytes + self.mask.nbytes
        return data + 3 * 112 + 100 * len(self.extra) + 300

    def place(self, item: str, table: ItemTable) -> int:
        """item's row, -1 if none. An item whose index was freed and given again since
        the answer counts as not kept (rare: only an item evicted meanwhile)."""
        i = table.get(item)
        if i >= 0 and table.since(i, self.generation):
            at = (self.rows == i).nonzero()[0]
            if len(at):
                return int(at[0])
        return self.extra.get(item, -1)


@dataclass(frozen=True, slots=True)
class RankQuery:
    """One call for rank_many(): the model's candidates best first with their logits (empty
    / None without the model; the ids, or their ItemTable indices as an int array), the
    session's clicks, the call's Unix time t, k, the ids it
    must not get, whether the last click is unknown to the model, and the session id (""
    keeps nothing for feedback)."""

    model_ids: Sequence[str] | np.ndarray
    model_logits: np.ndarray | None
    clicks: Sequence[str]
    t: float
    k: int
    exclude: Collection[str] = ()
    stale: bool = False
    session_id: str = ""


@dataclass(slots=True)
class _Batch:
    """A batch's queries with what their features are made of, as BatchIds indices: each
    query's model candidates (m_i,), each clock's successor entries (first clock, then
    second: OnlineModel.successors_many()'s rows (m,), shares (m,) and cuts, with their
    items as indices (m,)), every query's clicks one after the other with their counts,
    and the pool (none until it is made)."""

    names: BatchIds
    queries: Sequence[RankQuery]
    ts: list[float]
    model: list[np.ndarray]
    successors: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]]
    clicks: np.ndarray
    n_clicks: list[int]
    pool: Pool | None = None
    # every model candidate is its call's pool row of the same rank (slot j: candidate j),
    # as _pool() lays them out; set by _model_columns(), which checks it
    model_first: bool = False
    # each clock's most popular items, most popular first (first clock, second), when no
    # call excludes an item: then every call's pool holds them all (set by _pool())
    popular: list[np.ndarray] | None = None


def _model_rows(names: BatchIds, model_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The model's candidates as indices: as given when they are indices already."""
    if isinstance(model_ids, np.ndarray) and model_ids.dtype.kind in "iu":
        return model_ids.astype(np.int64, copy=False)
    return names.rows(list(model_ids))


class _Segments:
    """Rows of a batch grouped by call: call i owns rows starts[i] to starts[i + 1], the
    row starts[i] + j being its slot j. Sorts lay the rows out as (B, L) grids, L the
    largest call, so that one argsort ranks every call for several values at once."""

    def __init__(self, sizes: np.ndarray):
        self.sizes = sizes
        self.n = int(sizes.sum())
        # numpy's methods, not its functions, in this module's batch work: the functions'
        # Python wrappers cost microseconds per call, as much as the work on a small batch
        self.starts = sizes.cumsum() - sizes  # (B,)
        self.call = np.arange(len(sizes)).repeat(sizes)  # (N,) each row's call
        self.slot = np.arange(self.n) - self.starts.repeat(sizes)  # (N,) its place in it
        self.width = int(sizes.max()) if len(sizes) else 0

    def rank(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """values (N,) -> (order (B, L), rank (N,)): each call's slots by value, largest
        first (a stable sort: equal values keep row order, as np.argsort(-v, kind="stable")
        per call; the grid's empty slots go last), and each row's place in its call's
        order (0 = largest)."""
        grid = np.empty((len(self.sizes), self.width))
        grid.fill(np.inf)
        grid[self.call, self.slot] = -values
        order = grid.argsort(axis=1, kind="stable")
        places = np.empty_like(order)
        places[np.arange(len(self.sizes))[:, None], order] = np.arange(self.width)
        return order, places[self.call, self.slot]

    def in_top(self, values: np.ndarray, t: int) -> np.ndarray:
        """values (S, N) -> (S, N) bool: the row is among its call's t largest, ties taken
        in row order: rank(values[s])[1] < t, without sorting (the t-th largest value
        by a partition, then the ties at it counted in row order)."""
        if self.width <= t:
            return np.ones(values.shape, bool)
        grid = np.empty((len(values), len(self.sizes), self.width))
        grid.fill(-np.inf)
        grid[:, self.call, self.slot] = values
        kth = grid.copy()
        kth.partition(self.width - t, axis=2)
        kth = kth[:, :, self.width - t, None]
        above, tied = grid > kth, grid == kth
        room = t - above.sum(axis=2, keepdims=True)  # ties at the t-th value that fit
        above |= tied & (tied.cumsum(axis=2) <= room)
        return above[:, self.call, self.slot]

    def top(self, order: np.ndarray, k: np.ndarray) -> np.ndarray:
        """order (B, L) as rank() gives it, k (B,) -> the rows of each call's best k (at
        most its size), by call, then best first."""
        wanted = np.arange(self.width) < np.minimum(k, self.sizes)[:, None]  # (B, L)
        return (self.starts[:, None] + order)[wanted]


def _segment_logp(logits: np.ndarray, sizes: list[int]) -> np.ndarray:
    """(M,) logits of consecutive segments of the given sizes (each >= 1) -> (M,) float64
    log-probabilities of a softmax within each segment."""
    z = logits.astype(np.float64)
    n = np.array(sizes)
    starts = n.cumsum() - n
    z -= np.maximum.reduceat(z, starts).repeat(n)
    return z - np.log(np.add.reduceat(np.exp(z), starts)).repeat(n)


class OnlineRanker:
    """The linear ranker: features of the candidates, scores, and online weight updates.
    `first` is the online layer's OnlineModel (1 h popularity, 12 h transitions: its
    learning is the layer's); the ranker owns a second one (30 min, 1 h) fed by learn()."""

    def __init__(self, first: OnlineModel, config: RankerConfig | None = None, seed: int = 0):
        self.config = c = config or RankerConfig()
        self.first = first
        # the same ItemTable: an item is one index on both clocks
        self.second = OnlineModel(c.second_clock(first.config), first.table)
        self.prior = np.array([c.prior.get(f, 0.0) for f in FEATURES])
        self._weights = self.prior.copy()
        # feedback() queues its steps (the kept rows, the clicked one's place); `weights`
        # takes them all in one step when it is next read: one numpy pass per batch of calls
        self._steps: list[tuple[np.ndarray, int]] = []
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._pending: OrderedDict[str, _Answer] = OrderedDict()
        self.pending_bytes = 0  # the kept answers' memory (_Answer.nbytes)
        # rank_many()'s batches whose answers are still to be kept (_keep's arguments):
        # kept by settle(), after the callers have their answers
        self._unkept: list[tuple[_Batch, np.ndarray, _Segments, np.ndarray, int]] = []
        # (features, sources) 0/1: a source's ranking value is the sum of its columns
        self._source_matrix = np.zeros((len(FEATURES), len(SOURCES)))
        for s, cols in enumerate(SOURCES.values()):
            self._source_matrix[[_F[f] for f in cols], s] = 1.0
        # _keep(): row indices of the sources for fancy indexing, and each row's mask bit
        self._source_rows = np.broadcast_to(np.arange(len(SOURCES))[:, None], (len(SOURCES), TOP))
        self._bits = (1 << np.arange(len(SOURCES) + 1)).astype(np.uint8)
        names = (*SOURCES, RANKER)
        self._hits = dict.fromkeys(names, 0.0)  # running hit rates
        self._feedback = 0  # next clicks seen for a kept answer
        self._teachers: set[int] = set()  # hashes of who gave feedback, up to min_teachers
        self._recent: deque[int] = deque()  # who took each of the last teacher_window steps
        self._taught: dict[int, int] = {}  # their steps there, by who
        self._updates = 0  # of those, the ones whose row was kept (weights moved)

    def learn(self, items: Sequence[str], t: float) -> None:
        """The second clock learns the click items[-1] (the first is the layer's)."""
        self.second.learn(items, t)

    # --- features ---

    def candidates(
        self, model_ids: Sequence[str] | np.ndarray, clicks: Sequence[str], k: int = 0
    ) -> list[str]:
        """Distinct candidate ids: the model's best max(model_candidates, k), the
        statistics', the session's last clicks."""
        batch = self._gather([RankQuery(model_ids, None, clicks, 0.0, k)])
        assert batch.pool is not None
        return list(batch.names.ids(batch.pool.rows))

    def features(
        self,
        ids: list[str],
        clicks: Sequence[str],
        t: float,
        model_ids: Sequence[str] | np.ndarray = (),
        model_logits: np.ndarray | None = None,
        stale: bool = False,
    ) -> np.ndarray:
        """(len(ids), len(FEATURES)) float64 feature rows (module docstring); model_ids
        with their logits (best first) are the model's candidates, the softmax's support."""
        query = RankQuery(model_ids, model_logits, clicks, t, 0, (), stale)
        batch = self._gather([query], pooled=False)
        batch.pool = Pool(batch.names.rows(ids), batch.names.width, 1)
        return self._columns(batch).T

    def _gather(self, queries: Sequence[RankQuery], pooled: bool = True) -> _Batch:
        """What a batch's features are made of, as indices of one BatchIds: the model's
        candidates, both clocks' successor lists, the clicks; and (pooled) each call's
        pool: the model's best max(model_candidates, k), the first clock's successors of
        the last and second-last click and its `popular` most popular, the same of the
        second clock, the session's last `session_clicks` clicks, minus the excluded."""
        names = BatchIds(self.first.table)
        sessions = [q.clicks for q in queries]
        ts = [q.t for q in queries]
        model = [_model_rows(names, q.model_ids) for q in queries]
        successors = []
        for clock in (self.first, self.second):
            ids, backs, shares, cuts = clock.successors_many(sessions, ts)
            rows = names.fill(clock.table.find(ids), ids)
            successors.append((backs, rows, shares, cuts))
        n_clicks = list(map(len, sessions))
        clicks = names.rows(list(chain.from_iterable(sessions)))
        batch = _Batch(names, queries, ts, model, successors, clicks, n_clicks)
        if pooled:
            batch.pool = self._pool(batch)
        return batch

    def _pool(self, batch: _Batch) -> Pool:
        """The batch's pools (_gather()): each call's proposals laid out in order, then
        Pool.first_seen."""
        c, names, queries = self.config, batch.names, batch.queries
        tops = [clock.popular_rows(c.popular) for clock in (self.first, self.second)]
        parts: list[np.ndarray] = []
        end = 0
        for i, (q, model, n) in enumerate(zip(queries, batch.model, batch.n_clicks, strict=True)):
            parts.append(model[: max(c.model_candidates, q.k)])
            for (_, rows, _, cuts), top in zip(batch.successors, tops, strict=True):
                parts += (rows[cuts[i] : cuts[i + 1]], top)
            end += n
            parts.append(batch.clicks[max(end - c.session_clicks, end - n) : end])
        sizes = list(map(len, parts))
        per_call = np.add.reduceat(sizes, np.arange(0, len(sizes), 6))  # 6 parts per call
        calls = np.arange(len(queries)).repeat(per_call)
        excluded = np.zeros(0, np.int64)
        if any(q.exclude for q in queries):
            rows = names.rows(list(chain.from_iterable(q.exclude for q in queries)))
            excluded = np.repeat(np.arange(len(queries)), [len(q.exclude) for q in queries])
            excluded = excluded * names.width + rows
        else:
            batch.popular = tops
        return Pool.first_seen(calls, np.concatenate(parts), excluded, names.width, len(queries))

    def _columns(self, batch: _Batch) -> np.ndarray:
        """The feature columns of every call's pool side by side: (len(FEATURES), N), N the
        pool's rows, grouped by call; one contiguous row per feature, so that blocks of
        features take one numpy call each for the whole batch."""
        pool = batch.pool
        assert pool is not None
        n = pool.n
        x = np.zeros((len(FEATURES), n))
        self._model_columns(x, batch)
        # the columns of both clocks' successors and of the clicks, in one search
        (backs1, items1, values1, cuts1), (backs2, items2, values2, cuts2) = batch.successors
        calls = np.arange(len(batch.queries))
        counts = [
            np.array(cuts1[1:]) - cuts1[:-1],
            np.array(cuts2[1:]) - cuts2[:-1],
            batch.n_clicks,
        ]
        at = pool.find(
            np.concatenate([calls, calls, calls]).repeat(np.concatenate(counts)),
            np.concatenate([items1, items2, batch.clicks]),
        )
        m1, m2 = cuts1[-1], cuts1[-1] + cuts2[-1]
        # transition_fast, transition_slow, transition2_fast, transition2_slow; column n
        # takes the successors outside the pools
        shares = np.zeros((4, n + 1))
        shares[2 * backs1 + 1, at[:m1]] = values1  # the first clock's: 12 h
        shares[2 * backs2, at[m1:m2]] = values2  # the second's: 1 h
        evidence = x[_EVIDENCE]  # (6, n): t1 fast, t1 slow, t2 fast, t2 slow, pop fast, slow
        evidence[:4] = shares[:, :n]
        evidence[4] = self.second.popularity_of(pool.rows)  # 30 min
        evidence[5] = self.first.popularity_of(pool.rows)  # 1 h
        evidence /= _FLOORS
        np.log1p(evidence, out=evidence)
        evidence /= _LOG_NORM
        trend = x[_F["trend"]]
        np.subtract(evidence[4], evidence[5], out=trend)
        trend *= _TREND
        trend.clip(-1.0, 1.0, out=trend)
        # NaN only where neither clock tracks the item
        born = np.fmin(self.first.born_of(pool.rows), self.second.born_of(pool.rows))
        born -= np.array(batch.ts).repeat(pool.sizes)  # each call's own time
        born /= FRESH_S
        np.minimum(born, 0.0, out=born)  # -age / FRESH_S (NaN stays NaN)
        np.exp2(born, out=born)
        np.copyto(x[_F["freshness"]], born, where=born >= 0.0)  # not NaN; untracked: 0
        at = at[m2:]  # the clicks'
        x[_F["clicked"], at[at < n]] = 1.0
        ends = np.array(batch.n_clicks).cumsum()
        last = at[ends[np.array(batch.n_clicks) > 0] - 1]
        x[_F["last_click"], last[last < n]] = 1.0
        return x

    @staticmethod
    def _model_columns(x: np.ndarray, batch: _Batch) -> None:
        """Fill model_p and model_logp (model_logp_stale for a stale call) of x (F, N): each
        call's softmax over its model candidates, for every call of the batch at once."""
        calls, rows, logits, sizes, stale = [], [], [], [], []
        for i, (q, m) in enumerate(zip(batch.queries, batch.model, strict=True)):
            if len(m) and q.model_logits is not None:
                calls.append(i)
                rows.append(m)
                logits.append(q.model_logits)
                sizes.append(len(m))
                stale.append(q.stale)
        if not logits:
            return
        pool = batch.pool
        assert pool is not None
        logp = _segment_logp(np.concatenate(logits), sizes)  # (M,)
        rows_m, n = np.concatenate(rows), np.array(sizes)
        calls_m = np.array(calls)
        # _pool() puts each call's model candidates first, in order: then candidate j is
        # the call's slot j (checked), and no search is needed
        starts = pool.sizes.cumsum() - pool.sizes
        at = starts[calls_m].repeat(n) + np.arange(len(rows_m)) - (n.cumsum() - n).repeat(n)
        batch.model_first = bool((n <= pool.sizes[calls_m]).all()) and bool(
            (pool.rows.take(at, mode="clip") == rows_m).all()
        )
        if not batch.model_first:
            at = pool.find(calls_m.repeat(n), rows_m)
        features = np.where(stale, _F["model_logp_stale"], _F["model_logp"]).repeat(sizes)
        ranked = at < pool.n
        at, lp, features = at[ranked], logp[ranked], features[ranked]
        x[_F["model_p"], at] = np.exp(lp)
        lp += LOGP_RANGE
        lp /= LOGP_RANGE
        x[features, at] = lp.clip(0.0, 1.0)

    def _source_tops(self, batch: _Batch, x: np.ndarray, segments: _Segments) -> np.ndarray:
        """(sources, N) bool: the row is among its call's TOP best by the source's value,
        which is positive (ties in row order). Without sorting where the answer is known:
        a source with at most TOP positive rows in every call has them all; the model's
        best are its first slots when _model_columns() found them there (best first); a
        popularity source's are its clock's first TOP when no call excluded any (ties in
        the clock's order)."""
        values = self._source_matrix.T @ x  # (sources, N)
        tops = values > 0
        n_calls = len(segments.sizes)
        at = segments.call + n_calls * np.arange(len(SOURCES))[:, None]
        counts = np.bincount(at[tops], minlength=len(SOURCES) * n_calls)
        sort = counts.reshape(len(SOURCES), n_calls).max(axis=1) > TOP
        if batch.model_first and sort[0]:  # candidates best first: positive, then 0
            tops[0] &= segments.slot < TOP
            sort[0] = False
        if batch.popular is not None and sort[_POPULAR].any():
            assert batch.pool is not None
            first = np.zeros(batch.names.width, bool)
            for s, clock_top in zip(_POPULAR, batch.popular, strict=True):
                first[clock_top[:TOP]] = True
                tops[s] &= first[batch.pool.rows]
                first[clock_top[:TOP]] = False
            sort[_POPULAR] = False
        if sort.any():
            tops[sort] &= segments.in_top(values[sort], TOP)
        return tops

    # --- score ---

    def rank(
        self,
        model_ids: Sequence[str] | np.ndarray,
        model_logits: np.ndarray | None,
        clicks: Sequence[str],
        t: float,
        k: int,
        exclude: Collection[str] = (),
        stale: bool = False,
        session_id: str = "",
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The k best candidates (never one in `exclude`) best first, their scores (k,) and
        each one's largest contribution's feature index (k,) int. With a session_id the
        answer is kept for feedback() on that session's next click. rank_many() of one."""
        query = RankQuery(model_ids, model_logits, clicks, t, k, exclude, stale, session_id)
        return self.rank_many([query])[0][:3]

    def rank_many(
        self, queries: Sequence[RankQuery]
    ) -> list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
        """rank() for every query of a batch, with one feature matrix, one product with the
        weights and one segmented sort for them all: the same answers as one rank() per
        query under the same statistics and weights (equal scores keep the pool order).
        Each answer also has its items' ItemTable indices (k,) (an id without one: an
        index past the table), for checks by index rather than by id."""
        empty = ([], np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        out: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = [empty] * len(queries)
        self.settle()  # at most one batch waits to be kept
        asked = [i for i, q in enumerate(queries) if q.k > 0]
        if not asked:
            return out
        qs = [queries[i] for i in asked]
        batch = self._gather(qs)
        pool = batch.pool
        assert pool is not None
        if pool.n == 0:
            return out
        x = self._columns(batch)  # (F, N)
        w = self.weights  # read once: an update replaces the array, never edits it
        scores = w @ x  # (N,)
        keeping = any(q.session_id for q in qs)
        segments = _Segments(pool.sizes)
        order, rank = segments.rank(scores)
        top = segments.top(order, np.fromiter((q.k for q in qs), np.int64, len(qs)))
        best = (x[:, top] * w[:, None]).argmax(axis=0)  # largest contribution per answer row
        top_rows = pool.rows[top]
        top_ids = batch.names.ids(top_rows)
        top_scores = scores[top]
        cuts = segments.call[top].searchsorted(np.arange(len(qs) + 1)).tolist()
        for i, (a, b), size in zip(asked, pairwise(cuts), pool.sizes.tolist(), strict=True):
            if size:  # a call whose pool is empty gets nothing, and keeps nothing
                out[i] = list(top_ids[a:b]), top_scores[a:b], best[a:b], top_rows[a:b]
        if keeping:  # the table's generation now: its indices are the answers'
            self._unkept.append((batch, x, segments, rank, self.first.table.generation))
        return out

    def settle(self) -> None:
        """Keep the answers of the rank_many() calls since the last settle() for the
        sessions' next clicks. Deferred so that a server can send the answers first and
        keep them while the model runs the next batch (Recommender.learn_batch);
        rank_many(), feedback() and report() settle first themselves, so nothing is missed
        when nobody calls it."""
        while self._unkept:
            self._keep(*self._unkept.pop(0))

    def _keep(
        self,
        batch: _Batch,
        x: np.ndarray,
        segments: _Segments,
        rank: np.ndarray,
        generation: int,
    ) -> None:
        """Keep, per query with a session id, the rows its session's next click will learn
        from: the top `keep`, every source's top TOP (their bits in the mask), the clicked
        items, `samples` others. x: (F, N) as _columns() gives it; rank: each row's place in
        its call's ranking (0 = best); generation: the table's when they were ranked."""
        c = self.config
        queries, pool = batch.queries, batch.pool
        assert pool is not None
        chosen = np.empty((len(SOURCES) + 1, segments.n), np.uint8)  # sources' top rows, ours
        chosen[:-1] = self._source_tops(batch, x, segments)
        chosen[-1] = rank < TOP
        mask = self._bits @ chosen  # (N,) bit s: in source s's top TOP
        keep = mask > 0
        keep |= rank < c.keep
        keep |= x[_F["clicked"]] > 0
        rest = (~keep).nonzero()[0]
        counts = np.bincount(segments.call[rest], minlength=len(queries))
        wanted = np.fromiter((bool(q.session_id) for q in queries), bool, len(queries))
        wanted &= pool.sizes > 0
        draw = (wanted & (counts > 0)).nonzero()[0]
        if len(draw):  # the same draws, in the same order, as one call at a time
            first = rest.searchsorted(segments.starts[draw])
            # floor(u * count) < count for u < 1 (exact or rounded down in float64)
            picks = (self._rng.random((len(draw), c.samples)) * counts[draw][:, None]).astype(int)
            keep[rest[first[:, None] + picks]] = True
        kept = keep.nonzero()[0]
        rows = (x[:, kept].T * _ROW_SCALE).astype(np.int16)  # (r, F), C order
        kept_rows = pool.rows[kept]
        kept_mask = mask[kept]
        cuts = kept.searchsorted(segments.starts).tolist() + [len(kept)]
        names = batch.names
        answers = [
            (q.session_id, _Answer(kept_rows[a:b].copy(), generation, names.extra(kept_rows[a:b]),
                                   rows[a:b].copy(), kept_mask[a:b], len(q.clicks)))
            for q, (a, b), w in zip(queries, pairwise(cuts), wanted.tolist(), strict=True)
            if w
        ]  # fmt: skip
        with self._lock:
            for session_id, answer in answers:
                old = self._pending.pop(session_id, None)
                if old is not None:
                    answer.updates = old.updates
                    self.pending_bytes -= old.nbytes
                self._pending[session_id] = answer
                self.pending_bytes += answer.nbytes
                if len(self._pending) > c.pending_answers:
                    self.pending_bytes -= self._pending.popitem(last=False)[1].nbytes

    # --- learn the weights ---

    def feedback(self, session_id: str, n_clicks: int, clicked: str, teacher: str = "") -> bool:
        """The session's click number n_clicks (1 = its first) was `clicked`: if the
        session's kept answer was for the n_clicks - 1 before it, update the hit rates and
        (when the click's row was kept, and min_teachers have taught) the weights. teacher:
        who sent the click (the x-client-id; "": the session). True if the weights moved."""
        c = self.config
        self.settle()
        with self._lock:
            answer = self._pending.get(session_id)
            if answer is None or answer.n_clicks != n_clicks - 1:
                return False
            answer.n_clicks = -1  # an answer teaches once
            self._feedback += 1
            i = answer.place(clicked, self.first.table)
            mask = int(answer.mask[i]) if i >= 0 else 0
            rate = 1.0 / min(self._feedback, c.hit_window)
            for s, name in enumerate(self._hits):
                self._hits[name] += rate * (((mask >> s) & 1) - self._hits[name])
            if i < 0 or answer.updates >= c.max_updates_per_session:
                return False
            who = hash(teacher or f"session {session_id}")
            if len(self._teachers) < c.min_teachers:
                self._teachers.add(who)
                if len(self._teachers) < c.min_teachers:
                    return False
            # a session's own steps are capped by max_updates_per_session; a client's
            # sessions are not, so its share of the recent steps is
            if teacher and not self._may_step(who):
                return False
            answer.updates += 1
            self._steps.append((answer.x, i))
            self._updates += 1
            return True

    def _may_step(self, who: int) -> bool:
        """Whether `who` may take a step without holding more than 1 / min_teachers of the
        last teacher_window steps (at least one); if so, the step is counted."""
        c, recent, taught = self.config, self._recent, self._taught
        if taught.get(who, 0) + 1 > max(1.0, (len(recent) + 1) / c.min_teachers):
            return False
        recent.append(who)
        taught[who] = taught.get(who, 0) + 1
        if len(recent) > c.teacher_window:
            oldest = recent.popleft()
            taught[oldest] -= 1
            if not taught[oldest]:
                del taught[oldest]
        return True

    @property
    def kept_answers(self) -> int:
        """Answers kept for their sessions' next clicks (at most pending_answers)."""
        return len(self._pending)

    @property
    def weights(self) -> np.ndarray:
        """(F,) the current weights, the steps queued by feedback() taken first. An update
        replaces the array, never edits it."""
        if self._steps:
            with self._lock:
                self._update()
        return self._weights

    def _update(self) -> None:
        """The queued listwise steps, each from the same weights w: the log-likelihood of
        the clicked row i under a softmax of the scores over its answer's kept rows,
        w += lr * (x_i - E_p[x]) - lr * l2 * (w - PRIOR), summed. One step at a time when
        calls come one by one (replay); a batch of calls takes its steps together. Unlike
        pairwise steps against the rows above, a click no evidence explains does not
        flatten every weight: the softmax's sharpness settles where it is calibrated."""
        steps, self._steps = self._steps, []
        if not steps:
            return
        c, w = self.config, self._weights
        sizes = np.array([len(rows) for rows, _ in steps])
        starts = sizes.cumsum() - sizes
        x = np.concatenate([rows for rows, _ in steps]).astype(np.float64)  # (R, F)
        x /= _ROW_SCALE
        s = x @ w
        s -= np.maximum.reduceat(s, starts).repeat(sizes)
        p = np.exp(s)
        p /= np.add.reduceat(p, starts).repeat(sizes)
        clicked = starts + np.array([i for _, i in steps])
        step = x[clicked].sum(axis=0) - p @ x - len(steps) * c.l2 * (w - self.prior)
        self._weights = w + c.learning_rate * step

    # --- report ---

    def report(self) -> dict:
        """Learnt weights by feature, running hit rates by source (and "ranker": the answer's
        own top 20), how many next clicks gave feedback and how many moved the weights."""
        self.settle()
        weights = self.weights
        with self._lock:
            return {
                "weights": dict(zip(FEATURES, map(float, weights), strict=True)),
                "hit_rate": dict(self._hits),
                "feedback": self._feedback,
                "updates": self._updates,
                "pending_answers": len(self._pending),
            }
