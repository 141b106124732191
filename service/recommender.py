"""What a Recommend or ScoreItems call computes, independent of gRPC.

    engine = Recommender(ExportedModel.load(dir), SessionCache(100_000, 1800), Limits())
    result = engine.recommend("s1", ["a", "b"], top_k=10)
    result.item_ids, result.scores, result.source          # best first

Errors are RequestError subclasses whose message tells the caller what to change; the
server maps them to gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .runtime import ExportedModel
from .sessions import SessionCache, SessionState, clicks_digest

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"


class RequestError(Exception):
    """A request the service will not answer; the message says what to fix."""


class InvalidRequest(RequestError):
    """Malformed request: gRPC INVALID_ARGUMENT."""


class NoKnownClicks(RequestError):
    """strict request whose clicks are all unknown to the model: gRPC NOT_FOUND."""


@dataclass(frozen=True)
class Limits:
    max_clicks: int = 200
    max_top_k: int = 1000
    default_top_k: int = 20  # what top_k=0 (unset) means
    max_candidates: int = 10_000
    max_exclude: int = 10_000
    max_session_id_bytes: int = 256


@dataclass
class Result:
    """item_ids/scores best first; unknown_* in request order; cache: "hit", "miss" or ""
    (no session id, or popularity fallback)."""

    item_ids: list[str]
    scores: list[float]
    source: str
    unknown_clicks: list[str] = field(default_factory=list)
    unknown_candidates: list[str] = field(default_factory=list)
    cache: str = ""


class Recommender:
    def __init__(self, model: ExportedModel, cache: SessionCache, limits: Limits):
        self.model = model
        self.cache = cache
        self.limits = limits

    def recommend(
        self,
        session_id: str,
        clicks: Sequence[str],
        top_k: int = 0,
        exclude_items: Sequence[str] = (),
        include_clicked: bool = False,
        strict: bool = False,
    ) -> Result:
        """The top_k next items, excluding exclude_items and (unless include_clicked) the
        session's clicks. top_k=0 means Limits.default_top_k."""
        self._check_session(session_id, clicks)
        k = top_k or self.limits.default_top_k
        if not 1 <= k <= self.limits.max_top_k:
            raise InvalidRequest(
                f"top_k={top_k} is out of range; ask for 1 to {self.limits.max_top_k} items "
                f"(0 means {self.limits.default_top_k})"
            )
        if len(exclude_items) > self.limits.max_exclude:
            raise InvalidRequest(
                f"exclude_items has {len(exclude_items)} ids; send at most "
                f"{self.limits.max_exclude}"
            )
        known, unknown = self._encode(clicks)
        excluded = self._encode(exclude_items)[0]
        if not include_clicked:
            excluded = np.concatenate([excluded, known])
        excluded = np.unique(excluded)
        if len(known) == 0:
            self._check_fallback_allowed(strict, clicks)
            head = self.model.popularity_order[: k + len(excluded)]
            top = head[~np.isin(head, excluded)][:k]
            scores = self.model.popularity[top].astype(np.float32)
            return self._result(top, scores, SOURCE_POPULARITY, unknown)
        state, cache = self._state_before_last(session_id, known)
        # ask the graph's TopK for enough items that k survive the exclusions
        want = min(k + len(excluded), self.model.n_items)
        top_scores, top_items, new_state = self.model.top_k(known[-1:], state, want)
        self._remember(session_id, known, state, new_state)
        keep = ~np.isin(top_items[0], excluded)
        top, scores = top_items[0][keep][:k], top_scores[0][keep][:k]
        return self._result(top, scores, SOURCE_MODEL, unknown, cache=cache)

    def score_items(
        self,
        session_id: str,
        clicks: Sequence[str],
        candidates: Sequence[str],
        strict: bool = False,
    ) -> Result:
        """Scores of the known candidates, best first (equal scores keep request order)."""
        self._check_session(session_id, clicks)
        if not candidates or len(candidates) > self.limits.max_candidates:
            raise InvalidRequest(
                f"candidates has {len(candidates)} ids; send 1 to "
                f"{self.limits.max_candidates} item ids to score"
            )
        known, unknown = self._encode(clicks)
        cand_idx, cand_known = self._lookup(candidates)
        unknown_candidates = [c for c, ok in zip(candidates, cand_known, strict=True) if not ok]
        cand_idx = cand_idx[cand_known]
        cache = ""
        if len(known) == 0:
            self._check_fallback_allowed(strict, clicks)
            scores = self.model.popularity[cand_idx].astype(np.float32)
            source = SOURCE_POPULARITY
        else:
            state, cache = self._state_before_last(session_id, known)
            all_scores, new_state = self.model.scores(known[-1:], state)
            self._remember(session_id, known, state, new_state)
            scores, source = all_scores[0][cand_idx], SOURCE_MODEL
        order = np.argsort(-scores, kind="stable")
        result = self._result(cand_idx[order], scores[order], source, unknown, cache=cache)
        result.unknown_candidates = unknown_candidates
        return result

    # --- helpers ---

    def _check_session(self, session_id: str, clicks: Sequence[str]) -> None:
        if len(session_id.encode()) > self.limits.max_session_id_bytes:
            raise InvalidRequest(
                f"session_id is {len(session_id.encode())} bytes long; use at most "
                f"{self.limits.max_session_id_bytes} (e.g. a hash of a longer key)"
            )
        if not clicks:
            raise InvalidRequest(
                "clicks is empty; send the session's clicked item ids, oldest first "
                "(for a session without clicks, show a popularity list instead)"
            )
        if len(clicks) > self.limits.max_clicks:
            raise InvalidRequest(
                f"clicks has {len(clicks)} ids; send at most the last "
                f"{self.limits.max_clicks} clicks of the session"
            )

    def _check_fallback_allowed(self, strict: bool, clicks: Sequence[str]) -> None:
        if strict:
            shown = ", ".join(repr(c) for c in list(clicks)[:5])
            more = ", ..." if len(clicks) > 5 else ""
            raise NoKnownClicks(
                f"none of the {len(clicks)} clicks ({shown}{more}) is an item the model "
                "knows; send known item ids, or unset strict to get the popularity ranking"
            )

    def _lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        index = self.model.index
        idx = np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        return idx, idx >= 0

    def _encode(self, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(known indices in order, unknown ids in order)."""
        idx, known = self._lookup(ids)
        unknown = [i for i, ok in zip(ids, known, strict=True) if not ok]
        return idx[known], unknown

    def _state_before_last(self, session_id: str, known: np.ndarray) -> tuple[np.ndarray, str]:
        """State after all known clicks but the last, (1, S), and "hit"/"miss"/"" for the
        cache. Clicks run one at a time, as the cached path does, so both give equal bits."""
        resume = self.cache.resume(session_id, known)
        state = resume.state if resume.state is not None else self.model.zero_state(1)
        for item in known[resume.start : len(known) - 1]:
            state = self.model.advance(np.array([item], dtype=np.int64), state)
        return state, ("hit" if resume.hit else "miss") if session_id else ""

    def _remember(
        self, session_id: str, known: np.ndarray, before_last: np.ndarray, last: np.ndarray
    ) -> None:
        if session_id:
            entry = SessionState(len(known), clicks_digest(known), before_last, last)
            self.cache.put(session_id, entry)

    def _result(
        self,
        top: np.ndarray,
        scores: np.ndarray,
        source: str,
        unknown: list[str],
        cache: str = "",
    ) -> Result:
        ids = [self.model.item_ids[i] for i in top]
        return Result(ids, [float(s) for s in scores], source, unknown, cache=cache)
