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

Two stores with the same methods (get, put, continue_session, record_last, forget,
forget_local, len()): UserStore below, in this process's memory (the default; each replica
remembers the users it served), and user_store.RedisUserStore, shared by the replicas
through Redis (--user-store redis; user_store.make_user_store picks one).

Not thread-safe: the server touches it from its event loop only (UserStore's len(), which
/metrics calls from its own thread, excepted: it takes the store's lock).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..runtime import ExportedModel
from .sessions import SessionCache

if TYPE_CHECKING:
    pass


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
    call. max_entries=0 remembers nothing. clock: seconds, monotonic.

    Expired entries are dropped from the least recently used end whenever the store is
    read, written or counted: a user idle past ttl_s leaves memory and recsys_user_states
    without waiting for another user's write."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 0 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, UserEntry] = OrderedDict()
        # len() prunes from /metrics' thread while the event loop reads and writes
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The live entries (expired ones dropped first)."""
        with self._lock:
            self._prune(self.clock())
            return len(self._entries)

    def get(self, user_id: str) -> UserEntry | None:
        """The live entry (not refreshed: put() does that), or None."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            entry = self._entries.get(user_id)
            if entry is not None and now - entry.used > self.ttl_s:  # put with an old `used`
                del self._entries[user_id]
                return None
            return entry

    def put(self, user_id: str, entry: UserEntry) -> None:
        """Store (or replace) the entry as the most recently used; evicts the overflow and
        the expired from the least recently used end."""
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[user_id] = entry
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self._prune(self.clock())

    def _prune(self, now: float) -> None:
        """Drop the expired entries at the least recently used end (entries are put in the
        order of their users' calls); with the lock held."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest.used <= self.ttl_s:
                break
            entries.popitem(last=False)

    def record_last(self, user_id: str, session_id: str, state: np.ndarray) -> bool:
        """Set the entry's latest session state, (1, S), if its session is session_id;
        whether it was set."""
        entry = self.get(user_id)
        if entry is None or entry.session_id != session_id:
            return False
        entry.last = state
        return True

    def continue_session(
        self, user_id: str, session_id: str, now: float, idle_s: float
    ) -> tuple[UserEntry | None, bool]:
        """(the live entry or None, True when its session is session_id, not idle past
        idle_s: then the entry is already refreshed as used now, nothing left to put)."""
        entry = self.get(user_id)
        if entry is None or entry.session_id != session_id or now - entry.used > idle_s:
            return entry, False
        entry.used = now
        self.put(user_id, entry)
        return entry, True

    def forget(self, user_id: str) -> list[str]:
        """Drop the user's entry; the ids of its session under way and its ended ones."""
        with self._lock:
            entry = self._entries.pop(user_id, None)
        return [] if entry is None else [entry.session_id, *entry.ended]

    def forget_local(self, user_id: str) -> list[str]:
        """A ForgetUser another worker of the pod took: forget(), this store being this
        process's own."""
        return self.forget(user_id)

    def forgotten(self) -> list[str]:
        """Session ids other replicas forgot: none, nothing is shared."""
        return []


class Store(Protocol):
    """What UserSessions needs of a store: UserStore or RedisUserStore."""

    clock: Callable[[], float]  # seconds; the clock of UserEntry.used

    def __len__(self) -> int: ...
    def get(self, user_id: str) -> UserEntry | None: ...
    def put(self, user_id: str, entry: UserEntry) -> None: ...
    def continue_session(
        self, user_id: str, session_id: str, now: float, idle_s: float
    ) -> tuple[UserEntry | None, bool]: ...
    def record_last(self, user_id: str, session_id: str, state: np.ndarray) -> bool: ...
    def forget(self, user_id: str) -> list[str]: ...
    def forget_local(self, user_id: str) -> list[str]: ...
    def forgotten(self) -> list[str]: ...


class UserSessions:
    """The user graph's hand-over between sessions, over a store (UserStore or
    RedisUserStore). cache: the session cache whose entries forget() drops with
    the user's."""

    def __init__(
        self,
        model: ExportedModel,
        store: Store,
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
        if self.cache is not None:  # other replicas' ForgetUser calls, with a shared store
            for forgotten in self.store.forgotten():
                self.cache.forget(forgotten)
        now = self.store.clock()
        entry, refreshed = self.store.continue_session(user_id, session_id, now,
                                                       self.session_idle_s)  # fmt: skip
        if refreshed:  # the session goes on (most calls)
            assert entry is not None
            return entry.start
        if entry is None:  # no history: the first session starts from zero
            entry = UserEntry(np.zeros((1, self.model.user_size), np.float32), session_id, None)
        else:  # another session id, or the session idle too long: it has ended
            entry = self._next_session(entry, session_id)
        entry.used = now
        self.store.put(user_id, entry)
        return entry.start

    def seen(self, user_id: str, session_id: str, state: np.ndarray) -> bool:
        """Record the session's state after a call's clicks, (1, S); ignored, and False,
        when the user has begun another session meanwhile or was forgotten (ForgetUser
        while the call was in the model: its state must not be cached either)."""
        # a copy: batch rows are views
        return self.store.record_last(user_id, session_id, np.array(state, dtype=np.float32))

    def forget(self, user_id: str) -> None:
        """Drop the user's entry and the cached states of the user's recent sessions (in
        this replica's session cache). Raises user_store.StoreUnavailable when a shared
        store cannot be reached: then nothing is known to be deleted."""
        self._drop(self.store.forget(user_id))

    def forget_local(self, user_id: str) -> None:
        """forget() for a ForgetUser another worker of the pod took (workers/link.py): what
        this process holds only, as a shared store's entry was deleted by that worker.
        Never raises StoreUnavailable."""
        self._drop(self.store.forget_local(user_id))

    def _drop(self, sessions: list[str]) -> None:
        """Drop the cached states of the forgotten user's sessions."""
        if self.cache is None:
            return
        for session_id in sessions:
            self.cache.forget(session_id)

    def _next_session(self, entry: UserEntry, session_id: str) -> UserEntry:
        """The entry once entry's session has ended and session_id begun."""
        user, start = entry.user, entry.start
        if entry.last is not None:  # a session that never reached the model changes nothing
            user, start = self.model.end_session(entry.user, entry.last)
        ended = [entry.session_id, *entry.ended][:RECENT_SESSIONS]
        return UserEntry(user, session_id, start, ended=ended)
