"""User state across a user's sessions, for models with a user graph (HRNN, user.onnx).

    users = UserSessions(model, UserStore(100_000, ttl_s=30 * 86400), session_idle_s=1800)
    start = users.start("user-key", "session-7")        # (1, S), or None: the zero state
    ... the session's clicks run from `start` (unless its state is cached) ...
    users.seen("user-key", "session-7", state_after)     # (1, S), the session's latest state

The store remembers, per user id, the user state c (1, U), the session under way, the state
that session started from and its latest state. A session ends when a call of the user
carries another session id, or when the user made no call for session_idle_s: the next call
feeds the ended session's latest state through the user graph (ExportedModel.end_session),
which gives the new c and the state the new session starts from. A user's first session
starts from zero, so a user without history gets the session model's answer.

Ending a session is done lazily, at the user's next call: the result is the one an eager
fold at the timeout would give, and no timer walks the store. That call runs the user graph
on the event loop (one GRU cell step on a (1, U) and a (1, S) row, tens of microseconds),
once per session, not per call.

A user's sessions are taken one at a time: an earlier session id that comes back counts as
a new session (its cached state, if the session cache still holds it, is resumed all the
same). User ids are never logged: they identify people.

Not thread-safe: the server touches it from its event loop only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..runtime import ExportedModel
from .sessions import SessionCache

RECENT_SESSIONS = 4  # ended session ids kept per user, so ForgetUser drops their cache too


@dataclass(slots=True)
class UserEntry:
    """What the store holds for one user. Arrays are float32 rows, never mutated."""

    user: np.ndarray  # (1, U) c after the user's ended sessions
    session_id: str  # the session under way
    start: np.ndarray | None  # (1, S) the state it started from; None: zero
    last: np.ndarray | None = None  # (1, S) its state after its latest call; None: none yet
    used: float = 0.0  # clock of the user's latest call
    ended: list[str] = field(default_factory=list)  # the latest ended session ids


class UserStore:
    """LRU of UserEntry by user id, at most max_entries, each dropped after ttl_s without a
    call. max_entries=0 remembers nothing. clock: seconds, monotonic."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 0 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, UserEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str) -> UserEntry | None:
        """The live entry (not refreshed: put() does that), or None."""
        entry = self._entries.get(user_id)
        if entry is not None and self.clock() - entry.used > self.ttl_s:
            del self._entries[user_id]
            return None
        return entry

    def put(self, user_id: str, entry: UserEntry) -> None:
        """Store (or replace) the entry as the most recently used; evicts the overflow and
        the expired from the least recently used end."""
        if self.max_entries == 0:
            return
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        now = self.clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self.max_entries and now - oldest.used <= self.ttl_s:
                break
            self._entries.popitem(last=False)

    def pop(self, user_id: str) -> UserEntry | None:
        return self._entries.pop(user_id, None)


class UserSessions:
    """The user graph's hand-over between sessions, over a UserStore. cache: the session
    cache whose entries forget() drops with the user's."""

    def __init__(
        self,
        model: ExportedModel,
        store: UserStore,
        session_idle_s: float,
        cache: SessionCache | None = None,
    ):
        if not model.has_user_graph:
            raise ValueError("the model has no user graph (user.onnx): nothing to personalise")
        if session_idle_s <= 0:
            raise ValueError("session_idle_s must be positive")
        self.model = model
        self.store = store
        self.session_idle_s = session_idle_s
        self.cache = cache

    def start(self, user_id: str, session_id: str) -> np.ndarray | None:
        """The state the call's session starts from, (1, S), or None for the zero state.
        Ends the user's previous session first when this call begins another."""
        now = self.store.clock()
        entry = self.store.get(user_id)
        if entry is None:  # no history: the first session starts from zero
            entry = UserEntry(np.zeros((1, self.model.user_size), np.float32), session_id, None)
        elif entry.session_id != session_id or now - entry.used > self.session_idle_s:
            entry = self._next_session(entry, session_id)
        entry.used = now
        self.store.put(user_id, entry)
        return entry.start

    def seen(self, user_id: str, session_id: str, state: np.ndarray) -> None:
        """Record the session's state after a call's clicks, (1, S); ignored when the user
        has begun another session meanwhile (or was forgotten)."""
        entry = self.store.get(user_id)
        if entry is not None and entry.session_id == session_id:
            entry.last = np.array(state, dtype=np.float32)  # a copy: batch rows are views

    def forget(self, user_id: str) -> None:
        """Drop the user's entry and the cached states of the user's recent sessions."""
        entry = self.store.pop(user_id)
        if entry is None or self.cache is None:
            return
        for session_id in (entry.session_id, *entry.ended):
            self.cache.forget(session_id)

    def _next_session(self, entry: UserEntry, session_id: str) -> UserEntry:
        """The entry once entry's session has ended and session_id begun."""
        user, start = entry.user, entry.start
        if entry.last is not None:  # a session that never reached the model changes nothing
            user, start = self.model.end_session(entry.user, entry.last)
        ended = [entry.session_id, *entry.ended][:RECENT_SESSIONS]
        return UserEntry(user, session_id, start, ended=ended)
