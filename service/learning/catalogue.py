"""Which items the online layer may learn as click targets and recommend: the catalogue.

    catalogue = Catalogue(CatalogueConfig())
    catalogue.put([("new-1", 0.0), ("sale-7", time.time() + 86_400)], now)   # PutItems
    catalogue.admits("new-1", now)          # True; the model's own items are checked apart
    catalogue.observe("x", "session-1", "client-1", now)   # open mode: a sighting

Without a catalogue anything a client sends became a recommendation for the next shopper:
a typo, an id in no catalogue, an item pushed by one script. So an item is admitted when
  - the model knows it (the Recommender checks its vocabulary before asking here),
  - it was announced (PutItems, or a line of --catalogue-file), and has not expired, or
  - open mode (--catalogue-open, for sites without a feed): it was clicked in at least
    open_min_sessions distinct sessions from at least open_min_clients distinct clients
    (calls without x-client-id all count as one client). It then stays for open_ttl_s.
Items not admitted are neither learnt as targets nor recommended (guard.py, recommender.py).

Memory is bounded: announced items by max_items (PutItems beyond it is refused), open-mode
candidates by max_pending (least recently seen dropped), each with at most the thresholds'
worth of session and client hashes. Expiry is lazy: an expired item is dropped when asked
about, and a heap of expiry times drops the rest a few at a time on each change.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NEVER = math.inf


class CatalogueFull(Exception):
    """PutItems would take the catalogue over max_items: gRPC RESOURCE_EXHAUSTED."""


@dataclass(frozen=True)
class CatalogueConfig:
    # announced items held; about 150 bytes each (id, dict slot, heap entry), so ~150 MB
    max_items: int = 1_000_000
    open: bool = False  # admit unannounced ids on evidence (module docstring)
    # a typo is clicked once, by one shopper; a new product page is clicked by many. Ten
    # sessions from three clients: a script needs several client ids to open an item, and
    # each client's learning is capped anyway (guard.py)
    open_min_sessions: int = 10
    open_min_clients: int = 3
    open_ttl_s: float = 7 * 86_400.0  # an item opened on evidence is kept a week
    max_pending: int = 100_000  # ids being counted towards open admission

    def __post_init__(self) -> None:
        if min(self.max_items, self.max_pending, self.open_min_sessions) < 1:
            raise ValueError("max_items, max_pending and open_min_sessions must be >= 1")
        if self.open_min_clients < 1 or not self.open_ttl_s > 0:
            raise ValueError("open_min_clients must be >= 1 and open_ttl_s > 0")


class _Pending:
    """An id counted towards open admission: hashes of its distinct sessions and clients."""

    __slots__ = ("sessions", "clients")

    def __init__(self) -> None:
        self.sessions: set[int] = set()
        self.clients: set[int] = set()


class Catalogue:
    """Announced and open-admitted items, each with its expiry (Unix seconds, inf: never).

    Not thread-safe: the server touches it from its event loop only (the file is read in a
    worker thread, then applied on the loop)."""

    def __init__(self, config: CatalogueConfig | None = None):
        self.config = config or CatalogueConfig()
        self._expiry: dict[str, float] = {}  # announced or opened id -> expiry
        self._opened: set[str] = set()  # the ids of _expiry admitted in open mode
        self._from_file: set[str] = set()  # the ids of _expiry the catalogue file gave
        self._heap: list[tuple[float, str]] = []  # (expiry, id), finite expiries only
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def sizes(self) -> dict[str, int]:
        """Items by how they came in: announced (PutItems, file) and open (on evidence).
        Expired items not yet dropped are counted until the next change."""
        return {"announced": len(self._expiry) - len(self._opened), "open": len(self._opened)}

    def admits(self, item: str, now: float) -> bool:
        """Whether `item` was announced or opened and has not expired at `now`."""
        expiry = self._expiry.get(item)
        if expiry is None:
            return False
        if expiry > now:
            return True
        self._drop(item)
        return False

    def put(self, items: Iterable[tuple[str, float]], now: float) -> int:
        """Announce (id, expires_at) pairs, expires_at in Unix seconds or 0 for never; an
        announced id gets the new expiry, and one already past withdraws it (as expiry
        would). Returns how many ids are new. Raises CatalogueFull (nothing changed) when
        they would not fit in max_items."""
        self.expire(now)
        items = [(item, expiry if expiry > 0 else NEVER) for item, expiry in items]
        past = [item for item, expiry in items if expiry <= now]
        if past:
            self.remove(past)
            items = [(item, expiry) for item, expiry in items if expiry > now]
        new = {item for item, _ in items if item not in self._expiry}
        if len(self._expiry) + len(new) > self.config.max_items:
            raise CatalogueFull(
                f"the catalogue holds {len(self._expiry)} announced items and this call adds "
                f"{len(new)}, over --catalogue-max-items {self.config.max_items}; withdraw "
                "items (remove_item_ids), give them an expiry, or raise the limit"
            )
        for item, expiry in items:
            self._set(item, expiry)
            self._pending.pop(item, None)
            self._from_file.discard(item)  # announced by the call: a file edit keeps it
        return len(new)

    def remove(self, items: Iterable[str]) -> int:
        """Withdraw announced ids; returns how many were there."""
        removed = 0
        for item in items:
            if item in self._expiry:
                self._drop(item)
                removed += 1
        return removed

    def observe(self, item: str, session_id: str, client_id: str, now: float) -> bool:
        """Open mode: count a click on an unadmitted id by this session and client (""
        for calls without x-client-id); True when the id is admitted by it. Closed: False."""
        c = self.config
        if not c.open or not session_id:
            return False
        seen = self._pending.pop(item, None) or _Pending()
        self._pending[item] = seen  # now the most recent
        if len(seen.sessions) < c.open_min_sessions:
            seen.sessions.add(hash(session_id))
        if len(seen.clients) < c.open_min_clients:
            seen.clients.add(hash(client_id))
        if len(self._pending) > c.max_pending:
            self._pending.popitem(last=False)
        if len(seen.sessions) < c.open_min_sessions or len(seen.clients) < c.open_min_clients:
            return False
        del self._pending[item]
        if len(self._expiry) >= c.max_items:
            return False  # full: announcements come first
        self._set(item, now + c.open_ttl_s)
        self._opened.add(item)
        log.info("catalogue: %r opened after %d sessions from %d clients", item[:64],
                 len(seen.sessions), len(seen.clients))  # fmt: skip
        return True

    def expire(self, now: float) -> int:
        """Drop every item whose expiry has passed; returns how many."""
        heap, dropped = self._heap, 0
        while heap and heap[0][0] <= now:
            expiry, item = heapq.heappop(heap)
            if self._expiry.get(item) == expiry:  # else announced again with a new expiry
                self._drop(item)
                dropped += 1
        if len(heap) > 2 * len(self._expiry) + 64:  # re-announcements left stale entries
            self._heap = [(e, i) for i, e in self._expiry.items() if e != NEVER]
            heapq.heapify(self._heap)
        return dropped

    def replace_file_items(self, items: dict[str, float], now: float) -> tuple[int, int]:
        """The catalogue file's (id -> expiry) now: ids it no longer lists are withdrawn
        (unless announced by PutItems since), its ids announced. Returns (added, removed)."""
        gone = self._from_file - items.keys()
        removed = self.remove(gone)
        added = self.put(items.items(), now)
        self._from_file = set(items)
        return added, removed

    def _set(self, item: str, expiry: float) -> None:
        self._expiry[item] = expiry
        self._opened.discard(item)
        if expiry != NEVER:
            heapq.heappush(self._heap, (expiry, item))

    def _drop(self, item: str) -> None:
        del self._expiry[item]
        self._opened.discard(item)
        self._from_file.discard(item)


def read_catalogue_file(path: str | Path, max_item_id_bytes: int) -> dict[str, float]:
    """id -> expiry (Unix seconds, 0 for never) of a catalogue file: one item a line, an
    optional expiry after a tab; blank lines and lines starting with # are skipped. Raises
    ValueError naming the line at fault, OSError when it cannot be read."""
    items: dict[str, float] = {}
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        item, _, expiry = line.partition("\t")
        if len(item.encode()) > max_item_id_bytes:
            raise ValueError(f"{path}:{number}: item id longer than {max_item_id_bytes} bytes")
        try:
            items[item] = float(expiry) if expiry.strip() else 0.0
        except ValueError:
            raise ValueError(
                f"{path}:{number}: {expiry[:32]!r} is not an expiry (Unix seconds)"
            ) from None
        if not math.isfinite(items[item]):
            raise ValueError(f"{path}:{number}: the expiry must be a finite number")
    return items
