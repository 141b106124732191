"""Stage 4: online scores and the blend with the model.

    layer = OnlineLayer(OnlineModel(online_config_for(BlendConfig())), BlendConfig())
    layer.learn(session_id, clicks, now)                  # the request's new clicks
    ids, scores, sources = blend(model_part, layer.propose(clicks, now, exclude), k, weight)

The model ranks the items it was trained on; the online statistics (online.py) rank every
item clicked lately, new ones included. Both become probabilities of being the next click:
the model's logits through a softmax over its top `candidates` (the tail beyond them holds
little mass for a trained model), the online mixture as it is (its parts are already
conditional probabilities). The blend is

    score(j) = model_weight * p_model(j) + (1 - model_weight) * p_online(j)

where an item one side does not rank counts 0 there, so an item newer than the model can
still win on its online evidence. model_weight applies when the session's last click is
known to the model; when it is not (the session just clicked a new item), the model only
knows the session's older clicks and its weight is scaled by stale_factor. The defaults
were chosen by `scripts/bench_churn.py --sweep` on churn and stable data (docs/online.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..learning.items import ItemTable
from ..learning.online import OnlineConfig, OnlineModel
from ..learning.ranker import FEATURES, OnlineRanker, RankerConfig, RankQuery

SOURCE_MODEL, SOURCE_ONLINE = "model", "online"
SCORERS = ("ranker", "mixture")
# the side each feature's contribution counts for, by feature index
_SIDE_OF_FEATURE = np.array(
    [SOURCE_MODEL if f.startswith("model_") else SOURCE_ONLINE for f in FEATURES], object
)


@dataclass(frozen=True)
class BlendConfig:
    """Knobs of the blend. Defaults: `scripts/bench_churn.py --sweep` (churn seed 1 and
    data/demo, online.py as of 2026-11-23). model_weight 0.7 had the best churn Recall@20
    (0.663, MRR@20 0.383) of the weights that keep the stable data within 1% of the frozen
    model (0.7226 / 0.4134 against 0.7254 / 0.4157); 0.6 passes by a hair, 0.5 fails. With
    an hourly-updated model 0.5 would be best (0.655 against 0.650). On recorded calls
    (churn seeds 0 and 1), weights that follow the online evidence (the proposal's total
    mass, its top score, a power of its scores), and even the best weight per group of
    calls picked after the fact, gained at most 0.002 Recall@20 over a fixed weight: the
    blend stays linear."""

    # the model's share when the last click is known to it; service/config.py's
    # blend_model_weight (the server's setting) has the same default
    model_weight: float = 0.7
    # scales model_weight when the last click is unknown to the model: 0.5 beat 0.25 and 1
    # on churn Recall@20 and MRR@20 (stable data has no such click)
    stale_factor: float = 0.5
    # items each side proposes to the mixture scorer (the ranker asks the model for its
    # RankerConfig.model_candidates): 50 lost 0.006 Recall@20 with hourly updates, 150
    # gained 0.001 for half as much work again
    candidates: int = 100
    # "ranker": ranker.OnlineRanker, the linear ranker whose weights learn from the next
    # clicks (docs/online.md); "mixture": the fixed blend above (model_weight, stale_factor)
    scorer: str = "ranker"
    # clicks the layer learns before it ranks for calls without a known click (a fresh
    # server's first click made its item every such call's whole list); the guard lets a
    # client teach 20 a minute
    cold_min_clicks: int = 100
    # and from this many distinct clients (x-client-id, else session ids), as the ranker's
    # min_teachers: 100 calls of one client made a fresh server's cold list its one item
    cold_min_clients: int = 20

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer={self.scorer!r} must be one of {SCORERS}")
        if not 0.0 <= self.model_weight <= 1.0 or not 0.0 <= self.stale_factor <= 1.0:
            raise ValueError("model_weight and stale_factor must be in [0, 1]")
        if self.candidates < 1:
            raise ValueError(f"candidates={self.candidates} must be >= 1")
        if self.cold_min_clicks < 0 or self.cold_min_clients < 0:
            raise ValueError(f"cold_min_clicks={self.cold_min_clicks} and cold_min_clients="
                             f"{self.cold_min_clients} must be >= 0")  # fmt: skip


@dataclass(frozen=True)
class Ranked:
    """One side's proposal: ids best first with scores (logits for the model)."""

    ids: list[str]
    scores: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n,) logits -> (n,) float64 probabilities summing to 1 (empty for empty)."""
    x = logits.astype(np.float64)
    if len(x) == 0:
        return x
    z = np.exp(x - x.max())  # the largest term is exp(0): no overflow, whatever the logits
    return z / z.sum()


def blend(
    model: Ranked | None, online: Ranked | None, k: int, weight: float
) -> tuple[list[str], list[float], list[str]]:
    """The k best items of the blend (module docstring), with blended scores and the side
    whose part of each score is the larger (SOURCE_MODEL or SOURCE_ONLINE; the model on a
    tie). weight: the model's share in [0, 1]; a side with no share proposes nothing, so
    weight=1 ranks the model's candidates alone. Equal scores keep the model's order, then
    the online order.

    Cost, 100 + 100 candidates: 41-45 us of CPU on the shared 2-core dev machine (where
    dict(zip()) of 100 pairs takes 6 us), against 63-65 us for the version that kept both
    parts of every score in a list; scripts/bench_churn.py prints it."""
    model_part: dict[str, float] = {}
    if model is not None and weight > 0:
        model_part = dict(zip(model.ids, (weight * softmax(model.scores)).tolist(), strict=True))
    combined = model_part.copy()
    if online is not None and weight < 1:
        share, get = 1.0 - weight, combined.get
        for item, p in zip(online.ids, online.scores.tolist(), strict=True):
            combined[item] = get(item, 0.0) + share * p
    # a bound method as key keeps the sort in C; sorted() is stable, hence the tie order
    ids = sorted(combined, key=combined.__getitem__, reverse=True)[:k]
    scores = [combined[item] for item in ids]
    from_model = model_part.get
    # m >= o, for a score s = m + o, is 2m >= s (up to rounding)
    sources = [
        SOURCE_MODEL if 2.0 * from_model(item, 0.0) >= s else SOURCE_ONLINE
        for item, s in zip(ids, scores, strict=True)
    ]
    return ids, scores, sources


EXCLUDE_ROOM = 50  # exclusions a call may carry before the online popularity list runs short


def online_config_for(blend_config: BlendConfig, **settings: Any) -> OnlineConfig:
    """OnlineConfig whose sorted popularity list covers what the blend asks for: a longer
    request would get fewer popularity-only candidates than it asked for."""
    return OnlineConfig(popular_candidates=blend_config.candidates + EXCLUDE_ROOM, **settings)


class OnlineLayer:
    """The online statistics of one server, shared by every model it loads in turn, and
    what each session has already taught them.

    A request carries the session's whole history, so the same click arrives again and
    again; only clicks not seen before for the session are learnt. A session this replica
    has not seen teaches only its last click (the earlier ones went to whichever replica
    served them). Requests without a session id teach their last click."""

    def __init__(
        self,
        model: OnlineModel,
        config: BlendConfig,
        max_sessions: int = 100_000,
        ranker: RankerConfig | None = None,
    ):
        self.model = model
        self.config = config
        self.max_sessions = max_sessions
        # the default scorer; None with scorer="mixture"
        self.ranker = OnlineRanker(model, ranker) if config.scorer == "ranker" else None
        self._seen: OrderedDict[str, tuple[int, str]] = OrderedDict()  # id -> (n, last click)
        self.clicks_learnt = 0  # since the layer began, shared ones included
        self._learners: set[int] = set()  # who taught them, up to config.cold_min_clients
        # called with (session id, the session's clicks up to the one learnt, time) for each
        # click learnt: clickbus.ClickBus.publish shares it with the other replicas
        self.on_learn: Callable[[str, list[str], float], None] | None = None

    @property
    def model_candidates(self) -> int:
        """How many of the model's best items the layer reads: the ranker's
        model_candidates (its softmax and pool), the mixture's `candidates`. The model's
        TopK costs by k (40,000 items: 11 us a call more from 20 to 50, 21 from 50 to 100)."""
        return self.ranker.config.model_candidates if self.ranker else self.config.candidates

    @property
    def table(self) -> ItemTable:
        """The statistics' ItemTable: where callers get indices for RankQuery.model_ids."""
        return self.model.table

    def learn(self, session_id: str, clicks: list[str], now: float, client_id: str = "") -> int:
        """Learn the clicks of a request that are new; returns how many were learnt.
        client_id: who sent it (the ranker's weights learn only from many). Unguarded: the
        service learns through learn_click(), one click its guard chose at a time."""
        if not clicks:
            return 0
        n, last = len(clicks), clicks[-1]
        start = n - 1
        if session_id:
            seen = self._seen.get(session_id)
            if seen is not None:
                if seen == (n, last):
                    start = n  # a repeat: nothing new
                elif seen[0] < n:
                    start = seen[0]
            self._note(session_id, n, last)
        for i in range(start, n):
            self._learn(session_id, clicks[: i + 1], now, client_id)
        return n - start

    def learn_click(
        self, session_id: str, clicks: list[str], now: float, client_id: str = ""
    ) -> None:
        """Learn clicks[-1] alone, made after clicks[:-1], whatever this layer saw of the
        session before: the caller (the service's guard) chose that click, and no click it
        held back may come with it. The layer's own record of the session only keeps
        learn_shared() from learning the click again."""
        if session_id:
            self._note(session_id, len(clicks), clicks[-1])
        self._learn(session_id, clicks, now, client_id)

    def _note(self, session_id: str, n: int, last: str) -> None:
        """Record that the session's n-th click, `last`, was learnt (least recent dropped)."""
        self._seen.pop(session_id, None)
        self._seen[session_id] = (n, last)
        if len(self._seen) > self.max_sessions:
            self._seen.popitem(last=False)

    @property
    def warm(self) -> bool:
        """Whether the layer learnt enough, from enough clients, to rank for calls without a
        known click (BlendConfig.cold_min_clicks, cold_min_clients)."""
        c = self.config
        return self.clicks_learnt >= c.cold_min_clicks and len(self._learners) >= c.cold_min_clients

    def _learnt_from(self, session_id: str, client_id: str) -> None:
        self.clicks_learnt += 1
        if len(self._learners) < self.config.cold_min_clients and (client_id or session_id):
            self._learners.add(hash(client_id or f"session {session_id}"))

    def _learn(self, session_id: str, prefix: list[str], now: float, client_id: str) -> None:
        self._learnt_from(session_id, client_id)
        self.model.learn(prefix, now)
        if self.ranker is not None:
            self.ranker.learn(prefix, now)
            if session_id:  # the answer to prefix[:-1] learns which source had prefix[-1]
                self.ranker.feedback(session_id, len(prefix), prefix[-1], client_id)
        if self.on_learn is not None:
            self.on_learn(session_id, prefix, now)

    def settle(self) -> None:
        """Bookkeeping that no answer waits for, left until after the answers: the ranker
        keeping its answers for the sessions' next clicks (OnlineRanker.settle)."""
        if self.ranker is not None:
            self.ranker.settle()

    def learn_shared(self, session_id: str, n: int, recent: list[str], now: float) -> bool:
        """Learn the n-th click of a session that another replica learnt (recent: its last
        few clicks, the learnt one last), unless this layer learnt the session that far
        already; True if learnt. Not published again."""
        if session_id:
            seen = self._seen.get(session_id)
            if seen is not None and (seen[0] > n or seen == (n, recent[-1])):
                return False
            self._note(session_id, n, recent[-1])
        self._learnt_from(session_id, "")  # the other replica's guard chose it
        self.model.learn(recent, now)
        if self.ranker is not None:
            self.ranker.learn(recent, now)
        return True

    def propose(
        self, clicks: list[str], now: float, exclude: Collection[str], k: int = 0
    ) -> Ranked:
        n = max(self.config.candidates, k)  # top_k beyond the pool widens it
        ids, scores, _ = self.model.score(clicks, now, n, exclude, with_sources=False)
        return Ranked(ids, scores)

    def answer(
        self,
        session_id: str,
        clicks: list[str],
        model_part: Ranked | None,
        now: float,
        exclude: Collection[str],
        k: int,
        stale: bool = False,
    ) -> tuple[list[str], list[float], list[str]]:
        """The k best items for the click after `clicks` at `now` (Unix seconds), with
        scores and the side each owes most to (SOURCE_MODEL or SOURCE_ONLINE); never one in
        `exclude`. model_part: the model's candidates with logits (already without the
        excluded), None when the model does not answer; stale: the last click is unknown to
        the model. The ranker keeps the answer for the session's next click; the mixture
        scorer blends as blend() with model_weight (times stale_factor when stale)."""
        model_ids = model_part.ids if model_part is not None else []
        logits = model_part.scores if model_part is not None else None
        query = RankQuery(model_ids, logits, clicks, now, k, exclude, stale, session_id)
        ids, scores, sources, _ = self.answer_many([query])[0]
        return ids, scores, sources

    def answer_many(
        self, queries: Sequence[RankQuery]
    ) -> list[tuple[list[str], list[float], list[str], np.ndarray | None]]:
        """answer() for every call of a batch (its fields in a ranker.RankQuery: t is the
        call's time, model_ids and model_logits its model part, empty and None without one),
        ranked together by OnlineRanker.rank_many(); the mixture scorer answers one by one.
        Each answer comes with its items' ItemTable indices (ranker) or None (mixture)."""
        if self.ranker is None:
            return [(*self._mixture(q), None) for q in queries]
        out = []
        for ids, scores, top, rows in self.ranker.rank_many(queries):
            sources = _SIDE_OF_FEATURE[top].tolist()
            out.append((ids, scores.tolist(), sources, rows))
        return out

    def _mixture(self, q: RankQuery) -> tuple[list[str], list[float], list[str]]:
        online = self.propose(q.clicks, q.t, q.exclude, q.k)
        if q.model_logits is None:
            ids, scores = online.ids[: q.k], online.scores[: q.k].tolist()
            return ids, scores, [SOURCE_ONLINE] * len(ids)
        weight = self.config.model_weight
        weight *= self.config.stale_factor if q.stale else 1.0
        model_ids = q.model_ids
        if isinstance(model_ids, np.ndarray):  # ItemTable indices
            model_ids = list(map(self.table.ids.__getitem__, model_ids.tolist()))
        return blend(Ranked(list(model_ids), q.model_logits), online, q.k, weight)

    def size(self) -> dict[str, int]:
        """Items tracked, transitions over both clocks, and estimated bytes: the statistics
        (OnlineModel.memory_bytes()) and the ranker's kept answers (their count under
        kept_answers)."""
        models = [self.model] + ([self.ranker.second] if self.ranker is not None else [])
        stats = [m.stats() for m in models]
        ranker = self.ranker
        return {
            "items": stats[0]["items"],
            "transitions": sum(s["transitions"] for s in stats),
            "kept_answers": ranker.kept_answers if ranker is not None else 0,
            "bytes": sum(m.memory_bytes() for m in models)
            + (ranker.pending_bytes if ranker is not None else 0),
        }

    def report(self) -> dict:
        """The layer's size() under "size"; with the ranker, its weights by feature and the
        sources' running hit rates (ranker.report())."""
        out = self.ranker.report() if self.ranker is not None else {}
        out["size"] = self.size()
        return out
