"""What a Recommend or ScoreItems call computes, independent of gRPC: the pipeline.

    engine = Recommender(ExportedModel.load(dir), SessionCache(100_000, 1800), Limits())
    result = engine.recommend_now(engine.decode(request))          # one call, no batching
    result = await engine.recommend(engine.decode(request), deadline)   # batched (server)
    results = engine.finish_many(queries, jobs, nows)  # a batch whose model work has run

A call goes through the stages in one direction:
    decode.py     decode and validate            -> Query
    sessions.py   session state (cache resume)   -> Job
    users.py      with a user graph (HRNN): the state a user's new session starts from
    inference.py  batched model run (batching.py gathers the jobs)
    guard.py      the online layer learns the new clicks the guard lets through; only now,
                  once the call will be answered: a refused call teaches nothing
    blend.py      online scores and the blend with the model (catalogue items only)
    filters.py    exclusions and the cut to k    -> Result
The server only translates messages around this; the replay evaluator calls it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..learning.catalogue import Catalogue
from ..learning.guard import LearningGuard
from ..learning.ranker import RankQuery
from ..proto import recommender_pb2 as pb
from ..runtime import ExportedModel
from .batching import Batcher, BatchStats
from .blend import SOURCE_ONLINE, OnlineLayer
from .decode import (
    InvalidRequest,
    Limits,
    NoKnownClicks,
    Query,
    decode_recommend,
    decode_score_items,
    quote,
)
from .filters import (
    bottom_k_excluding,
    order_candidates,
    top_k_excluding,
    top_k_excluding_arrays,
)
from .inference import Job, run_jobs
from .sessions import SessionCache, make_entry
from .users import Store, UserSessions

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"
SOURCE_BLEND = "blend"
DEADLINE_MARGIN_S = 0.002  # what answering takes after the model ran
# online answers asked again without the items found outside the catalogue, at most
ADMIT_RETRIES = 3

__all__ = ["InvalidRequest", "Limits", "NoKnownClicks", "Recommender", "Result"]


@dataclass(slots=True)
class Result:
    """item_ids/scores best first; unknown_* in request order; cache: "hit", "miss" or ""
    (no session id, or popularity fallback)."""

    item_ids: list[str]
    scores: list[float]
    source: str  # model, popularity, online or blend
    item_sources: list[str] | None = None  # per item when parts were blended; else `source`
    unknown_clicks: list[str] = field(default_factory=list)
    unknown_candidates: list[str] = field(default_factory=list)
    cache: str = ""
    skipped_clicks: int = 0
    # bottom_k least likely items, worst first, with their scores and source (model or
    # popularity); empty unless the query asked for them
    bottom_ids: list[str] = field(default_factory=list)
    bottom_scores: list[float] = field(default_factory=list)
    bottom_source: str = ""


@dataclass(slots=True)
class Call:
    """A call in the batcher: its query, model work and Unix time; `result` is filled in by
    finish_batch() together with the rest of its batch, with the seconds of the batch's
    learning and answering shared out per call (learn_s, finish_s)."""

    query: Query
    job: Job
    now: float
    deadline: float  # the job's: what the batcher checks
    result: Result | None = None
    learn_s: float = 0.0
    finish_s: float = 0.0


class Recommender:
    """One model with its session cache, and the server's online layer if it has one with
    the guard of what it learns (default: GuardConfig's rules over a closed catalogue);
    thread-unsafe by design (one event loop). use_model=False answers from the online layer
    alone (for comparisons). user_store: where ForgetUser deletes when the model has no user
    graph (users None): a shared store (--user-store redis) holds what other models left."""

    def __init__(
        self,
        model: ExportedModel,
        cache: SessionCache,
        limits: Limits,
        prefix_s_per_click: float = 20e-6,
        online: OnlineLayer | None = None,
        use_model: bool = True,
        guard: LearningGuard | None = None,
        users: UserSessions | None = None,
        user_store: Store | None = None,
    ):
        self.model = model
        self.users = users  # models with a user graph: where a user's sessions start
        self.user_store = users.store if users is not None else user_store
        self.cache = cache
        self.limits = limits
        self.online = online
        self.use_model = use_model
        # the server's guard and catalogue outlive model reloads, like its online layer
        self.guard = LearningGuard() if guard is None else guard
        self.catalogue: Catalogue = self.guard.catalogue
        # cost of one prefix click, to cut a cold prefix that would miss its deadline;
        # measured by warm_up()
        self.prefix_s_per_click = prefix_s_per_click
        self.batcher: Batcher[Call] | None = None
        # the model's items as the online layer's ItemTable indices, so that its candidates
        # reach the ranker as ints (held for as long as the layer lives: a model loaded
        # again, or its successor sharing most of its items, adds no entries). Made by the
        # first call answered, not here: the server builds an engine in a worker thread,
        # and the table must not change under a batch the event loop is ranking
        self._online_rows: np.ndarray | None = None
        # (table size,) bool: the model's items among those indices, with _online_rows
        self._vocabulary: np.ndarray | None = None

    # --- stage 1: decode ---

    def decode(self, request: pb.RecommendRequest, client_id: str = "") -> Query:
        return decode_recommend(request, self.model.index, self.limits, client_id)

    def decode_score_items(self, request: pb.ScoreItemsRequest, client_id: str = "") -> Query:
        return decode_score_items(request, self.model.index, self.limits, client_id)

    # --- the whole call ---

    def start_batching(
        self, max_batch: int, max_wait_s: float, max_queue: int, stats: BatchStats
    ) -> None:
        """Create the batcher (inside the running event loop): the model runs a batch of
        calls in its thread, then finish_batch() answers them together on the loop."""
        self.batcher = Batcher(
            lambda calls: run_jobs(self.model, [c.job for c in calls]),
            max_batch,
            max_wait_s,
            max_queue,
            stats,
            finish=self.finish_batch,
            meanwhile=self.learn_batch,
        )

    async def close(self) -> None:
        """Stop batching once the queued calls have run, then let go of the model's item
        indices in the online layer's table (a reload's old engine: its successor holds
        its own; else every retrained vocabulary stayed in the table for good)."""
        if self.batcher is not None:
            await self.batcher.close()
        if self._online_rows is not None and self.online is not None:
            release = self.online.table.release
            for i in self._online_rows.tolist():
                release(i)
        self._online_rows = self._vocabulary = None

    async def submit(self, query: Query, job: Job, now: float) -> Call:
        """The call through the batcher, learnt and answered with its batch (call.result);
        raises batching.Overloaded / DeadlineExpired, and then nothing is learnt."""
        assert self.batcher is not None, "start_batching() first"
        call = Call(query, job, now, job.deadline)
        await self.batcher.submit(call)
        return call

    def learn_batch(self, calls: list[Call]) -> None:
        """While a batch's model work runs: the online layer keeps the answers of the
        batch before (OnlineLayer.settle, left until now so that they went out first),
        then learns every call's new clicks in arrival order, before any of them is
        answered (finish_batch). So a call is ranked with the clicks of its whole batch
        learnt, not only those before it."""
        started = time.perf_counter()
        if self.online is not None:
            self.online.settle()
        for call in calls:
            self.learn(call.query, call.now)
        share = (time.perf_counter() - started) / len(calls)
        for call in calls:
            call.learn_s = share

    def finish_batch(self, calls: list[Call]) -> None:
        """Once a batch's model work has run (and learn_batch): all its calls are answered
        together (finish_many)."""
        started = time.perf_counter()
        results = self.finish_many([c.query for c in calls], [c.job for c in calls],
                                   [c.now for c in calls])  # fmt: skip
        share = (time.perf_counter() - started) / len(calls)
        for call, result in zip(calls, results, strict=True):
            call.result, call.finish_s = result, share

    async def recommend(self, query: Query, deadline: float = float("inf")) -> Result:
        """The call through the batcher; raises batching.Overloaded / DeadlineExpired."""
        now = time.time()
        job = self.prepare(query, deadline)
        if job is None:
            self.learn(query, now)
            return self.popularity(query, now)
        call = await self.submit(query, job, now)
        assert call.result is not None
        return call.result

    def recommend_now(self, query: Query, now: float | None = None) -> Result:
        """The call run on its own, in this thread (replay, tools, tests). now: Unix seconds
        of the call (default: the clock), for the online layer."""
        now = time.time() if now is None else now
        job = self.prepare(query)  # NoKnownClicks before anything is learnt
        self.learn(query, now)
        if job is None:
            return self.popularity(query, now)
        run_jobs(self.model, [job])
        return self.finish(query, job, now)

    def learn(self, query: Query, now: float) -> int:
        """The online layer learns the new clicks of an answered call that the guard lets
        through (now: Unix seconds); returns how many. Call it once the call can no longer
        be refused."""
        if self.online is None:
            return 0
        clicks = query.clicks
        chosen = self.guard.select(query.session_id, clicks, query.client_id, now,
                                   self.model.index)  # fmt: skip
        for i, session_id in chosen:
            self.online.learn_click(session_id, clicks[: i + 1], now, query.client_id)
        return len(chosen)

    def _online_answers(
        self,
        queries: list[Query],
        parts: list[tuple[np.ndarray, np.ndarray] | None],
        nows: list[float],
        stales: list[bool],
    ) -> list[tuple[list[str], list[float], list[str]]]:
        """OnlineLayer.answer_many for a batch of calls, without items outside the catalogue
        (learnt from another replica, expired or withdrawn since): the calls that got some
        are asked again without them."""  # fmt: skip
        assert self.online is not None
        index, admits = self.model.index, self.catalogue.admits
        asks = []
        for q, part, now, stale in zip(queries, parts, nows, stales, strict=True):
            rows, logits = part if part is not None else (np.zeros(0, np.int64), None)
            exclude = self._excluded_ids(q)
            asks.append(RankQuery(rows, logits, q.clicks, now, q.top_k, exclude, stale,
                                  q.session_id))  # fmt: skip
        answers = self.online.answer_many(asks)
        todo = self._outside_vocabulary(answers)
        for attempt in range(ADMIT_RETRIES):
            again = []
            for i in todo:
                now = asks[i].t
                outside = [item for item in answers[i][0]
                           if item not in index and not admits(item, now)]  # fmt: skip
                if outside:
                    assert isinstance(asks[i].exclude, set)
                    asks[i].exclude.update(outside)
                    again.append(i)
            todo = again
            if not todo or attempt == ADMIT_RETRIES - 1:
                break
            for i, answer in zip(todo, self.online.answer_many([asks[i] for i in todo]),
                                 strict=True):  # fmt: skip
                answers[i] = answer
        for i in todo:  # still some outside after the last try: drop them
            ids, scores, sources, _ = answers[i]
            now = asks[i].t
            keep = [j for j, item in enumerate(ids) if item in index or admits(item, now)]
            answers[i] = (
                [ids[j] for j in keep],
                [scores[j] for j in keep],
                [sources[j] for j in keep],
                None,
            )
        return [(ids, scores, sources) for ids, scores, sources, _ in answers]

    def _outside_vocabulary(self, answers: list) -> list[int]:
        """The answers (OnlineLayer.answer_many's) holding an item the model does not know,
        for the catalogue to check: by ItemTable index for the whole batch at once where
        the answers carry them (looking up 20 ids a call in the model's 40,000-id dict
        cost 6 us a call in cache misses), else by id."""
        index, vocabulary = self.model.index, self._vocabulary
        rows = [answer[3] for answer in answers]
        if vocabulary is None or any(r is None for r in rows):
            known = index.__contains__
            return [i for i, answer in enumerate(answers) if not all(map(known, answer[0]))]
        flat = np.concatenate(rows)
        inside = vocabulary.take(flat, mode="clip") & (flat < len(vocabulary))
        calls = np.arange(len(rows)).repeat([len(r) for r in rows])
        return np.unique(calls[~inside]).tolist()

    # --- stage 2: session state ---

    def prepare(self, query: Query, deadline: float = float("inf")) -> Job | None:
        """The model work of a call, or None when no click is known (popularity)."""
        known = query.known
        if len(known) == 0 or not self.use_model:
            if query.strict and len(known) == 0:
                raise NoKnownClicks(
                    f"none of the {len(query.clicks)} clicks ({quote(query.clicks)}) is an "
                    "item the model knows; send known item ids, or unset strict to get the "
                    "popularity ranking"
                )
            return None
        user_start = self._user_start(query)  # (1, S) or None, the zero state
        owner = 0 if user_start is None else hash(query.user_id)
        resume = self.cache.resume(query.session_id, known, self._fills_window(query), owner)
        start = resume.start
        state = resume.state if resume.state is not None else user_start
        if state is None:
            state = self.model.zero_state(1)
        skipped = 0
        if resume.state is None and deadline != float("inf"):
            budget = deadline - time.monotonic() - DEADLINE_MARGIN_S
            fits = max(0, int(budget / self.prefix_s_per_click))
            if len(known) - 1 > fits:  # feed only the latest clicks that fit in time
                skipped = len(known) - 1 - fits
                start = skipped
        want_k = 0
        if query.candidates is None:
            want_k = query.top_k + len(query.excluded)
            if self.online is not None:  # the blend wants the model's candidates
                want_k = max(want_k, self.online.model_candidates + len(query.excluded))
            want_k = min(want_k, self.model.n_items)
        return Job(
            state,
            known[start : len(known) - 1],
            int(known[-1]),
            want_k,
            want_scores=query.candidates is not None or query.bottom_k > 0,
            deadline=deadline,
            cache_hit=resume.hit,
            owner=owner,
            skipped=skipped,
        )

    # --- stages 4-5: online scores, filters, result ---

    def finish(self, query: Query, job: Job, now: float | None = None) -> Result:
        """The answer to one call whose model work has run: finish_many() of one."""
        return self.finish_many([query], [job], [time.time() if now is None else now])[0]

    def finish_many(self, queries: list[Query], jobs: list[Job], nows: list[float]) -> list[Result]:
        """The answers to a batch of calls whose model work has run (nows: each call's Unix
        time): session state kept, the online layer's answers ranked for the whole batch
        at once (OnlineLayer.answer_many), exclusions, the cut to k, the least likely."""
        results: list[Result | None] = []
        online: list[int] = []  # calls the online layer answers
        parts: list[tuple[np.ndarray, np.ndarray] | None] = []  # model candidates, logits
        for i, (query, job) in enumerate(zip(queries, jobs, strict=True)):
            cache = self._remember(query, job)
            if query.candidates is None and self.online is not None:
                online.append(i)
                parts.append(self._model_part(query, job))
                results.append(None)
            else:
                results.append(self._model_result(query, job, cache))
        if online:
            qs = [queries[i] for i in online]
            stales = [bool(q.unknown) and q.clicks[-1] not in self.model.index for q in qs]
            answers = self._online_answers(qs, parts, [nows[i] for i in online], stales)
            for i, (top, scores, sources) in zip(online, answers, strict=True):
                query, job = queries[i], jobs[i]
                cache = ("hit" if job.cache_hit else "miss") if query.session_id else ""
                results[i] = Result(top, scores, SOURCE_BLEND, sources, query.unknown, [],
                                    cache, job.skipped)  # fmt: skip
        done = [r for r in results if r is not None]
        for query, job, result in zip(queries, jobs, done, strict=True):
            if query.bottom_k:
                assert job.scores is not None
                self._add_bottom(result, query, job.scores, SOURCE_MODEL)
        return done

    def _add_bottom(self, result: Result, query: Query, scores: np.ndarray, source: str) -> None:
        items, worst = bottom_k_excluding(scores, query.excluded, query.bottom_k)
        ids = self.model.item_ids
        result.bottom_ids = [ids[i] for i in items]
        result.bottom_scores = worst
        result.bottom_source = source

    def _remember(self, query: Query, job: Job) -> str:
        """Keep the session's new state in the cache; the call's cache outcome."""
        if query.session_id and not job.skipped:  # a cut-short state is not the session's
            assert job.before_last is not None and job.after is not None
            user = self.users is not None and query.user_id
            # a user forgotten (ForgetUser) while the call was in the model: nothing of the
            # session may be kept
            if not user or self.users.seen(query.user_id, query.session_id, job.after):
                entry = make_entry(query.known, job.before_last, job.after,
                                   self._fills_window(query), job.owner)  # fmt: skip
                self.cache.put(query.session_id, entry)
        return ("hit" if job.cache_hit else "miss") if query.session_id else ""

    def _model_part(self, query: Query, job: Job) -> tuple[np.ndarray, np.ndarray]:
        """The model's candidates for the online layer, without the excluded: (n,) their
        ItemTable indices and (n,) float32 logits."""
        assert self.online is not None
        assert job.top_items is not None and job.top_scores is not None
        n = max(self.online.model_candidates, query.top_k)  # top_k up to 1,000
        top_items, logits = top_k_excluding_arrays(job.top_items, job.top_scores,
                                                   query.excluded, n)  # fmt: skip
        if self._online_rows is None:  # once per model, ~10 ms per 40,000 items
            self._online_rows = self.online.table.acquire_all(self.model.item_ids)
            self._vocabulary = np.zeros(int(self._online_rows.max(initial=-1)) + 1, bool)
            self._vocabulary[self._online_rows] = True
        return self._online_rows[top_items], logits

    def _model_result(self, query: Query, job: Job, cache: str) -> Result:
        """The answer from the model alone: the candidates asked for, or its top k."""
        if query.candidates is not None:
            assert job.scores is not None
            items, scores = order_candidates(query.candidates, job.scores[query.candidates])
        else:
            assert job.top_items is not None and job.top_scores is not None
            items, scores = top_k_excluding(
                job.top_items, job.top_scores, query.excluded, query.top_k
            )
        return self._result(query, items, scores, SOURCE_MODEL, cache, job.skipped)

    def _user_start(self, query: Query) -> np.ndarray | None:
        """The state the call's session starts from when its user's is known (users.py)."""
        if self.users is None or not query.user_id or not query.session_id:
            return None
        return self.users.start(query.user_id, query.session_id)

    def forget_user(self, user_id: str) -> None:
        """ForgetUser: drop what is remembered of the user: its entry in the user store and
        the cached states of its sessions; with a shared store whatever model serves (one
        without a user graph keeps no user state, but the store holds what an HRNN export
        before it left, and a rollback would read). Raises user_store.StoreUnavailable when
        the shared store does not answer."""
        if self.users is not None:
            self.users.forget(user_id)
        elif self.user_store is not None:
            for session_id in self.user_store.forget(user_id):
                self.cache.forget(session_id)

    def forget_user_here(self, user_id: str) -> None:
        """A ForgetUser another worker of the pod took (workers/link.py): drop what this
        process holds of the user; a shared store's entry is that worker's to delete, and
        is deleted already. Never raises StoreUnavailable."""
        if self.users is not None:
            self.users.forget_local(user_id)
        elif self.user_store is not None:
            for session_id in self.user_store.forget_local(user_id):
                self.cache.forget(session_id)

    def _excluded_ids(self, query: Query) -> set[str]:
        excluded = set(query.exclude_ids)
        if query.exclude_clicked:
            excluded.update(query.clicks)
        return excluded

    def _fills_window(self, query: Query) -> bool:
        return len(query.clicks) >= self.limits.max_clicks

    def popularity(self, query: Query, now: float | None = None) -> Result:
        """The answer without the model: the online layer's ranking when it has one,
        else training-set popularity; exclusions applied. The least likely items, when
        asked for, are the least clicked in training."""
        result = self._popular(query, now)
        if query.bottom_k:
            counts = self.model.popularity.astype(np.float32)
            self._add_bottom(result, query, counts, SOURCE_POPULARITY)
        return result

    def _popular(self, query: Query, now: float | None) -> Result:
        """A call without a known click: the online layer's ranking once it is warm
        (OnlineLayer.warm: a fresh layer's few clicks must not decide what every such caller
        sees: one click from one client made its item the whole list), filled up to top_k
        with training-set popularity; else that popularity alone."""
        model, online = self.model, self.online
        warm = online is not None and online.warm
        if query.candidates is not None:
            counts = model.popularity[query.candidates].astype(np.float32)
            items, scores = order_candidates(query.candidates, counts)
            return self._result(query, items, scores, SOURCE_POPULARITY, "", 0)
        head = model.popularity_order[: 2 * query.top_k + len(query.excluded)]
        top_scores = model.popularity[head].astype(np.float32)
        items, scores = top_k_excluding(head, top_scores, query.excluded, 2 * query.top_k)
        if not warm:
            return self._result(query, items[: query.top_k], scores[: query.top_k],
                                SOURCE_POPULARITY, "", 0)  # fmt: skip
        now = time.time() if now is None else now
        ids, online_scores, _ = self._online_answers([query], [None], [now], [False])[0]
        if not ids:
            return self._result(query, items[: query.top_k], scores[: query.top_k],
                                SOURCE_POPULARITY, "", 0)  # fmt: skip
        return self._filled(query, ids, online_scores, items)

    def _filled(
        self, query: Query, ids: list[str], scores: list[float], popular: list[int]
    ) -> Result:
        """The online ranking of a call without a known click, up to top_k with the most
        popular training items it lacks. Those score 0, the ranker's score of an item with
        no online evidence: after the online items scored above 0, before any below."""
        ranked = set(ids)
        fill = [i for i in (self.model.item_ids[j] for j in popular) if i not in ranked]
        fill = fill[: max(query.top_k - len(ids), 0)]
        if not fill:
            return Result(ids, scores, SOURCE_ONLINE, None, query.unknown)
        above = sum(1 for score in scores if score >= 0.0)
        merged = ids[:above] + fill + ids[above:]
        merged_scores = scores[:above] + [0.0] * len(fill) + scores[above:]
        sources = [SOURCE_ONLINE] * above + [SOURCE_POPULARITY] * len(fill)
        sources += [SOURCE_ONLINE] * (len(ids) - above)
        return Result(merged, merged_scores, SOURCE_BLEND, sources, query.unknown)

    def _result(
        self,
        query: Query,
        items: list[int],
        scores: list[float],
        source: str,
        cache: str,
        skipped: int,
    ) -> Result:
        ids = self.model.item_ids
        return Result(
            [ids[i] for i in items],
            scores,
            source,
            None,
            query.unknown,
            query.unknown_candidates or [],
            cache,
            skipped,
        )

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64), prefix: int = 30) -> None:
        """Run the graphs once per batch size (first runs allocate) and time a prefix."""
        model = self.model
        for b in batch_sizes:
            items = np.zeros(b, dtype=np.int64)
            model.step(items, model.zero_state(b), 20, with_scores=False)
        clicks = np.arange(prefix, dtype=np.int64) % model.n_items
        model.advance_many([clicks], model.zero_state(1))
        started = time.perf_counter()
        for _ in range(5):
            model.advance_many([clicks], model.zero_state(1))
        self.prefix_s_per_click = (time.perf_counter() - started) / (5 * prefix)
