"""Per-session recurrent state cache: bounded in entries and in bytes, idle entries expire.

A request carries the session's click history, so the cache is only a shortcut: a replica
that never saw the session (or forgot it) recomputes from the clicks. An entry remembers
the known clicks c[0..n-1] of the session's last request and two states:

    before_last  state after c[0..n-2]  (what the last click is fed with)
    last         state after c[0..n-1]

A request whose known clicks are exactly c again re-runs only the last click from
`before_last` (a Recommend then a ScoreItems for the same page cost one step each); one that
extends c runs only the new clicks from `last`. A session longer than the request limit is
sent as a sliding window of its latest clicks: when both c and the request filled the
window, a request that is c without its first d clicks plus new ones also resumes from
`last`, so the state keeps the whole session (a replica that never saw the session starts
from the window, which differs only by what the first clicks left in the state). Anything
else starts from zero.

Not thread-safe: the server touches it from its event loop only.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_SLIDE = 32  # how far a window may have slid between two calls and still resume
# bytes an entry costs beyond its two arrays' data: the OrderedDict node and slot, the
# SessionState object, two ndarray headers and the key string's header (measured with
# tracemalloc in tests/service/pipeline/test_sessions.py)
ENTRY_OVERHEAD_BYTES = 560


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the cache holds for one session. clicks (n,) int32 item indices; states (2, S)
    float32: row 0 before the last click, row 1 after it. Never mutated."""

    clicks: np.ndarray
    states: np.ndarray
    full: bool = False  # the request filled the click window (a sliding session)
    # whose start state the clicks ran from: 0 the zero state, else the user's (an
    # in-process hash of the user id): a call of another user, or of none, must not resume
    # a user's personalised state
    owner: int = 0

    @property
    def nbytes(self) -> int:
        return self.clicks.nbytes + self.states.nbytes + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class Resume:
    """Where to start a session's computation: feed clicks[start:] from `state` (1, S)."""

    start: int
    state: np.ndarray | None  # None: start from the zero state
    hit: bool


MISS = Resume(0, None, False)


class SessionCache:
    """LRU of SessionState by session id, bounded by max_entries and max_bytes, with an
    idle time-to-live. max_entries=0 disables caching. clock: seconds, monotonic."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        max_bytes: int = 1 << 62,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_entries < 0 or ttl_s <= 0 or max_bytes <= 0:
            raise ValueError("max_entries must be >= 0, ttl_s and max_bytes > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.nbytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> SessionState | None:
        """The live entry for session_id (refreshing its idle time), or None."""
        found = self._entries.get(session_id)
        if found is None:
            return None
        now = self._clock()
        if now - found[0] > self.ttl_s:
            self._drop(session_id)
            return None
        self._entries[session_id] = (now, found[1])
        self._entries.move_to_end(session_id)
        return found[1]

    def put(self, session_id: str, state: SessionState) -> None:
        if self.max_entries == 0:
            return
        now = self._clock()
        if session_id in self._entries:
            self._drop(session_id)
        self._entries[session_id] = (now, state)
        self.nbytes += state.nbytes + _key_bytes(session_id)
        self._evict(now)

    def forget(self, session_id: str) -> None:
        """Drop the session's entry, if any (ForgetUser)."""
        if session_id in self._entries:
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        _, state = self._entries.pop(session_id)
        self.nbytes -= state.nbytes + _key_bytes(session_id)

    def _evict(self, now: float) -> None:
        # oldest use first: expired entries and the overflow both sit at the front
        entries = self._entries
        while entries:
            key, (used, _) = next(iter(entries.items()))
            full = len(entries) > self.max_entries or self.nbytes > self.max_bytes
            if not full and now - used <= self.ttl_s:
                break
            self._drop(key)

    def resume(
        self, session_id: str, clicks: np.ndarray, full: bool = False, owner: int = 0
    ) -> Resume:
        """How much of `clicks` (known item indices, oldest first, at least one) the cached
        entry covers. The last click always runs, since it produces the scores. full: the
        request filled the click window, so it may have slid past the cached clicks;
        owner: the call's start state (SessionState.owner), which the entry's must be."""
        entry = self.get(session_id) if session_id else None
        if entry is None or entry.owner != owner:
            return MISS
        cached, n = entry.clicks, len(clicks)
        m = len(cached)
        if m == n and np.array_equal(cached, clicks):
            return Resume(n - 1, entry.states[0:1], True)
        if m < n and np.array_equal(cached, clicks[:m]):
            return Resume(m, entry.states[1:2], True)
        if not (full and entry.full):  # short sessions do not slide: a match would be chance
            return MISS
        for slide in range(1, min(m, MAX_SLIDE + 1)):
            kept = m - slide  # cached clicks still in the request's window
            if kept < n and np.array_equal(cached[slide:], clicks[:kept]):
                return Resume(kept, entry.states[1:2], True)
        return MISS


def make_entry(
    clicks: np.ndarray,
    before_last: np.ndarray,
    last: np.ndarray,
    full: bool = False,
    owner: int = 0,
) -> SessionState:
    """An entry for known clicks (n,) with the (1, S) states before and after the last."""
    states = np.concatenate([before_last, last])  # float32 rows from the model: a copy
    return SessionState(np.asarray(clicks, dtype=np.int32), states, full, owner)


def _key_bytes(session_id: str) -> int:
    return sys.getsizeof(session_id)
