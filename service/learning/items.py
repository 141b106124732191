"""Item ids as int indices, for the online layer's batch work in numpy.

    table = ItemTable()
    i = table.acquire("a")                     # "a" -> its index, held once more
    rows = table.find(["a", "b"])              # array([i, -1]): "b" has no index
    table.ids[i]                               # "a"
    table.release(i)                           # no holder left: the index is free again
    table.since(i, generation)                 # i has meant the same id since `generation`

The online statistics (online.py) keep the string ids they learn in dicts; the ranker's
features for a batch of calls (ranker.py) are arrays, one row per candidate. Both clocks'
statistics and the model's vocabulary share one table, so a candidate is one int wherever
it comes from, and only the final k of an answer go back to strings.

An index is held by whoever needs it to stay: each clock for the items it tracks (released
on eviction), the service for a loaded model's vocabulary. A released index with no holder
left is reused by the next new id, so the table stays within what is held (the clocks'
max_items, the vocabularies) however many ids pass through.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np


class ItemTable:
    """String ids <-> int indices with holder counts. Not thread-safe by itself: the
    online layer calls it from one event loop (and under OnlineModel's lock)."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # index -> id ("" while the index is free)
        self._index: dict[str, int] = {}
        self._holders: list[int] = []  # index -> how many hold it
        self._free: list[int] = []  # released indices, reused last-freed first
        # ids given an index so far; index -> the count when it got its current id, so
        # that an index kept for later (a ranked answer's rows) can be checked to still
        # mean the same id
        self.generation = 0
        self._given_at = array("q")

    def __len__(self) -> int:
        """The size of the index space (free indices included): every index is below it."""
        return len(self.ids)

    def acquire(self, item: str) -> int:
        """item's index, made if it has none; the caller holds it until release()."""
        i = self._index.get(item)
        if i is None:
            self.generation += 1
            if self._free:
                i = self._free.pop()
                self.ids[i] = item
                self._given_at[i] = self.generation
            else:
                i = len(self.ids)
                self.ids.append(item)
                self._holders.append(0)
                self._given_at.append(self.generation)
            self._index[item] = i
        self._holders[i] += 1
        return i

    def acquire_all(self, items: Iterable[str]) -> np.ndarray:
        """acquire() of each item: (n,) int64 indices in the same order."""
        return np.fromiter(map(self.acquire, items), np.int64)

    def release(self, i: int) -> None:
        """Drop one hold on index i; with none left its id is forgotten."""
        self._holders[i] -= 1
        if self._holders[i] == 0:
            del self._index[self.ids[i]]
            self.ids[i] = ""
            self._free.append(i)

    def get(self, item: str) -> int:
        """item's index, -1 when it has none (changes nothing)."""
        return self._index.get(item, -1)

    def since(self, i: int, generation: int) -> bool:
        """Whether index i has meant its present id since the table's `generation` (then
        an index i noted at that generation stands for that id)."""
        return self._given_at[i] <= generation

    def find(self, items: Sequence[str]) -> np.ndarray:
        """(len(items),) int64 indices, -1 for ids without one (changes nothing)."""
        return np.fromiter(map(self._index.get, items, repeat(-1)), np.int64, len(items))

    def memory_bytes(self) -> int:
        """Bytes of the table's own containers and index ints (the ids are the holders')."""
        big_ints = max(len(self.ids) - 256, 0)  # CPython caches the ints below 256
        return (
            sys.getsizeof(self.ids)
            + sys.getsizeof(self._index)
            + sys.getsizeof(self._holders)
            + sys.getsizeof(self._free)
            + sys.getsizeof(self._given_at)
            + big_ints * sys.getsizeof(2**40)
        )
