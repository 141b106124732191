"""Per-session recurrent state cache: bounded in entries, entries expire when idle.

A request carries the session's whole click history, so the cache is only a shortcut: a
replica that never saw the session (or forgot it) recomputes from the clicks and gets the
same answer. An entry remembers, for the known clicks c[0..n-1] of the last request, a digest
of those n indices and two states:

    before_last  state after c[0..n-2]  (what the last click is fed with)
    last         state after c[0..n-1]

A request whose known clicks are exactly c[0..n-1] again re-runs only the last click from
`before_last`; one that extends them runs only the new clicks from `last`; anything else
starts from zero. Keeping `before_last` is what makes a repeated request (a Recommend then
a ScoreItems for the same page) cost one step instead of a full recompute.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DIGEST_BYTES = 16  # 128-bit blake2b: collisions between two prefixes are not a concern


def clicks_digest(items: np.ndarray) -> bytes:
    """Digest of a sequence of item indices (any integer dtype; compared as int64)."""
    data = np.ascontiguousarray(items, dtype="<i8").tobytes()
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True)
class SessionState:
    """What the cache holds for one session; states are (1, S) float32, never mutated."""

    n_clicks: int
    digest: bytes
    before_last: np.ndarray
    last: np.ndarray


@dataclass(frozen=True)
class Resume:
    """Where to start a session's computation: feed clicks[start:] from `state`."""

    start: int
    state: np.ndarray | None  # None: start from the zero state
    hit: bool


class SessionCache:
    """Thread-safe LRU of SessionState by session id, with an idle time-to-live.

    max_entries=0 disables caching. clock: seconds, monotonic (injectable for tests)."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 0 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, session_id: str) -> SessionState | None:
        """The live entry for session_id (refreshing its idle time), or None."""
        now = self._clock()
        with self._lock:
            found = self._entries.get(session_id)
            if found is None:
                return None
            if now - found[0] > self.ttl_s:
                del self._entries[session_id]
                return None
            self._entries[session_id] = (now, found[1])
            self._entries.move_to_end(session_id)
            return found[1]

    def put(self, session_id: str, state: SessionState) -> None:
        if self.max_entries == 0:
            return
        now = self._clock()
        with self._lock:
            self._entries[session_id] = (now, state)
            self._entries.move_to_end(session_id)
            self._evict(now)

    def _evict(self, now: float) -> None:
        # oldest use first: expired entries and the overflow both sit at the front
        while self._entries:
            key, (used, _) = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_entries and now - used <= self.ttl_s:
                break
            del self._entries[key]

    def resume(self, session_id: str, clicks: np.ndarray) -> Resume:
        """How much of `clicks` (known item indices, oldest first, at least one) the cached
        entry covers. The last click always runs, since it produces the scores."""
        entry = self.get(session_id) if session_id else None
        n = len(clicks)
        if entry is not None:
            if entry.n_clicks == n and entry.digest == clicks_digest(clicks):
                return Resume(n - 1, entry.before_last, True)
            if entry.n_clicks < n and entry.digest == clicks_digest(clicks[: entry.n_clicks]):
                return Resume(entry.n_clicks, entry.last, True)
        return Resume(0, None, False)
