"""Which of a call's clicks the online layer may learn: the learning guard.

    guard = LearningGuard(GuardConfig(), Catalogue())
    for i, key in guard.select(session_id, clicks, client_id, now, known=model.index):
        layer.learn_click(key, clicks[: i + 1], now)  # click i alone, after the ones before it

The online statistics are shared by every user, so whatever one client teaches them, others
are shown. Tried as an attacker would, on the unguarded service one client sending
[the most popular item, "EVIL-1"] put EVIL-1 first in that item's recommendations after 2
calls. The guard decides, per answered call (refused calls never get here):

  no_session         a call without a session id teaches nothing (it cannot be told apart
                     from the next one, so a script could repeat it without end)
  unknown_item       the clicked item is not in the catalogue (catalogue.py): not the
                     model's, not announced, not opened on evidence
  repeat_transition  the session, or the client within its window, taught this transition
                     (previous click -> click) already; or the client taught the skip
                     transition the layer learns with it (the click before the previous ->
                     click): else its sessions [a, y1, t], [a, y2, t], ... taught a -> t
                     once per fresh y (a session alone is held by its cap)
  session_cap        the session has taught session_clicks clicks already
  client_cap         the x-client-id has taught client_clicks clicks in its window

Only the session's new clicks are considered, as OnlineLayer would: all the clicks after
those of the session's previous call, or for a session the guard has not seen (or whose
history did not grow, e.g. a sliding window) the last click alone. A call repeated as it
was (a retry, a second call for the same page) teaches nothing and is not counted.
refused (an error answer) is counted by the server. Calls without x-client-id are capped
per session only, so the frontend should send one for every call.

The layer is handed the chosen clicks one at a time, each as the prefix of the session up
to it, and learns that click alone (OnlineLayer.learn_click): the guard's records decide
what is new, never the layer's, which may know a session this guard does not (a click
shared by another replica) or have dropped one this guard still keeps. A chosen click goes
with its session id, so that the ranker learns from the answer the session was given,
until one of the session's clicks is held back: a session caught repeating or over its
cap teaches its later clicks without it, and so gives the ranker no feedback.

Per replica: with several replicas each applies the caps to the calls it answers (a client
spread over N replicas teaches up to N times as much). State is bounded: sessions by
max_sessions (least recently used dropped, as OnlineLayer drops its own records), each with
an 8-byte hash per learnt transition (at most session_clicks); clients by max_clients,
each with at most client_clicks clicks of two hashes (transition and skip transition). At
the defaults about 60 MB and 45 MB at worst.
"""

from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from collections.abc import Container, Sequence
from dataclasses import dataclass

from .catalogue import Catalogue

log = logging.getLogger(__name__)

REASONS = (
    "no_session",
    "refused",
    "unknown_item",
    "repeat_transition",
    "session_cap",
    "client_cap",
)


@dataclass(frozen=True)
class GuardConfig:
    # a session rarely has more than 50 clicks; past them it adds little a shorter one does
    # not, and a script reusing one session id is stopped there
    session_clicks: int = 50
    # a person clicks a few times a minute; 20 leaves room for a shared device or address
    # while one client with thousands of fresh sessions adds 20 clicks a minute at most
    client_clicks: int = 20
    client_window_s: float = 60.0
    max_sessions: int = 100_000  # the server passes its --cache-size, as to OnlineLayer
    max_clients: int = 100_000

    def __post_init__(self) -> None:
        counts = ("session_clicks", "client_clicks", "max_sessions", "max_clients")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.client_window_s > 0:
            raise ValueError(f"client_window_s={self.client_window_s} must be > 0 seconds")


class LearnStats:
    """What the guard let through and what it held back, by reason (plain numbers)."""

    def __init__(self) -> None:
        self.learnt = 0
        self.not_learnt = dict.fromkeys(REASONS, 0)


class _Session:
    __slots__ = ("n", "last", "held_back", "pairs")

    def __init__(self) -> None:
        self.n = 0  # clicks of the session's last call (0: none seen yet)
        self.last = ""  # its last click
        self.held_back = False  # a new click of the session was not learnt
        self.pairs = array("q")  # hashes of the transitions learnt, one per learnt click


class _Client:
    __slots__ = ("start", "pairs", "skips")

    def __init__(self, start: float) -> None:
        self.start = start  # when its window began
        self.pairs = array("q")  # transitions learnt in the window, one per learnt click
        self.skips = array("q")  # their skip transitions


def transition_hashes(two_back: str | None, previous: str | None, item: str) -> tuple[int, int]:
    """The hashes the guard records for a click: its transition (previous -> item) and
    its skip transition (two_back -> item; 0 without a click two back)."""
    skip = hash(("skip", two_back, item)) if two_back is not None else 0
    return hash((previous, item)), skip


class LearningGuard:
    """The rules of the module docstring over per-session and per-client records. Not
    thread-safe: the server calls it from its event loop only. Times are Unix seconds of
    the call (the replay's clock in service.tools.replay)."""

    def __init__(self, config: GuardConfig | None = None, catalogue: Catalogue | None = None):
        self.config = config or GuardConfig()
        self.catalogue = Catalogue() if catalogue is None else catalogue  # len 0 is falsy
        self.stats = LearnStats()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recent first
        self._clients: OrderedDict[str, _Client] = OrderedDict()  # oldest window first
        self._warned = False  # about calls without x-client-id

    def refused(self) -> None:
        """Count a call answered with an error: it teaches nothing."""
        self.stats.not_learnt["refused"] += 1

    def select(
        self,
        session_id: str,
        clicks: Sequence[str],
        client_id: str,
        now: float,
        known: Container[str],
    ) -> list[tuple[int, str]]:
        """(index, session id for OnlineLayer.learn) of each click of an answered call that
        may be learnt, in order (module docstring); the records are updated as if they were.
        known: the model's item ids (always admitted)."""
        if not session_id:
            self.stats.not_learnt["no_session"] += 1
            return []
        session = self._session(session_id)
        n, last = len(clicks), clicks[-1]
        if session.n == n and session.last == last:
            return []  # the same call again: nothing new
        start = session.n if 0 < session.n < n else n - 1
        session.n, session.last = n, last
        client = self._client(client_id, now) if client_id else None
        chosen = []
        for i in range(start, n):
            item = clicks[i]
            if item in known or self._admits(item, session_id, client_id, now):
                reason = self._check(session, client, clicks, i)
            else:
                reason = "unknown_item"
            if reason:
                self.stats.not_learnt[reason] += 1
                session.held_back = True
            else:
                chosen.append((i, "" if session.held_back else session_id))
        self.stats.learnt += len(chosen)
        if chosen and not client_id and not self._warned:
            self._warned = True
            log.warning("learning from calls without x-client-id: they are capped per session "
                        "only, so one caller with many session ids is not capped; have the "
                        "frontend send x-client-id (a hash of the user's device or address) "
                        "with every call")  # fmt: skip
        return chosen

    def _check(
        self, session: _Session, client: _Client | None, clicks: Sequence[str], i: int
    ) -> str:
        """The reason click i (an admitted item) may not be learnt, or an empty string
        when it may, and then it is recorded as learnt."""
        pair, skip = transition_hashes(clicks[i - 2] if i > 1 else None,
                                       clicks[i - 1] if i > 0 else None, clicks[i])  # fmt: skip
        if pair in session.pairs:
            return "repeat_transition"
        if len(session.pairs) >= self.config.session_clicks:
            return "session_cap"
        if client is not None:
            if pair in client.pairs or (skip and skip in client.skips):
                return "repeat_transition"
            if len(client.pairs) >= self.config.client_clicks:
                return "client_cap"
            client.pairs.append(pair)
            if skip:
                client.skips.append(skip)
        session.pairs.append(pair)
        return ""

    def _admits(self, item: str, session_id: str, client_id: str, now: float) -> bool:
        """An item the model does not know: announced, opened, or opened by this click."""
        catalogue = self.catalogue
        return catalogue.admits(item, now) or catalogue.observe(item, session_id, client_id, now)

    def _session(self, session_id: str) -> _Session:
        sessions = self._sessions
        session = sessions.pop(session_id, None) or _Session()
        sessions[session_id] = session  # now the most recent
        if len(sessions) > self.config.max_sessions:
            sessions.popitem(last=False)
        return session

    def _client(self, client_id: str, now: float) -> _Client:
        clients, window = self._clients, self.config.client_window_s
        client = clients.get(client_id)
        if client is None or now - client.start >= window:
            clients.pop(client_id, None)
            client = clients[client_id] = _Client(now)  # a new window, at the end
        while len(clients) > self.config.max_clients or (
            now - next(iter(clients.values())).start >= window
        ):
            clients.popitem(last=False)
        return client
