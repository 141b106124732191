"""Candidate pools of a batch of calls as int arrays, for the ranker (ranker.py).

    names = BatchIds(table)                          # ItemTable indices, for this batch
    rows = names.rows(["a", "never-seen"])           # the second gets a temporary index
    pool = Pool.first_seen(calls, rows, excluded, names.width, n_calls)
    at = pool.find(calls, rows)                      # their columns (pool.n: not in it)
    names.ids(pool.rows[:5])                         # back to strings, only for what is shown

A call's pool is every candidate its sources propose, in the order they propose them, each
once (the first time), without the ones it excludes: what dict.fromkeys() over the
concatenated proposals gave, minus the excluded, computed for the whole batch at once.
Rows are grouped by call; a candidate is identified within the batch by its key
call * width + index, so one sorted search finds any (call, item) pair's column.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

import numpy as np

from .items import ItemTable


class BatchIds:
    """ItemTable indices for one batch, and temporary ones past the table for ids that
    have none (a click the guard did not let through, a successor evicted since): they
    are items like any other for the batch, and are forgotten with it. The table must not
    change while the batch is ranked (one event loop: learning waits)."""

    def __init__(self, table: ItemTable):
        self.table = table
        self.base = len(table)  # temporary indices start here
        self._extra: dict[str, int] = {}
        self._extra_ids: list[str] = []

    @property
    def width(self) -> int:
        """Every index of this batch is below it."""
        return self.base + len(self._extra_ids)

    def rows(self, items: Sequence[str]) -> np.ndarray:
        """(len(items),) int64 indices of items, temporary ones where the table has none."""
        return self.fill(self.table.find(items), items)

    def fill(self, rows: np.ndarray, items: Sequence[str]) -> np.ndarray:
        """rows (table.find(items)) with their -1 entries given temporary indices, in place."""
        for m in (rows < 0).nonzero()[0].tolist():
            item = items[m]
            i = self._extra.get(item)
            if i is None:
                i = self._extra[item] = self.width
                self._extra_ids.append(item)
            rows[m] = i
        return rows

    def extra(self, rows: np.ndarray) -> dict[str, int]:
        """{id: place in rows} of the temporary indices among rows (usually none)."""
        if not self._extra_ids:
            return {}
        base, extra = self.base, self._extra_ids
        return {extra[r - base]: j for j, r in enumerate(rows.tolist()) if r >= base}

    def ids(self, rows: np.ndarray) -> tuple[str, ...]:
        """The ids of indices `rows` (C-speed when none is temporary)."""
        r = rows.tolist()
        table_ids = self.table.ids
        if self._extra_ids and r and max(r) >= self.base:
            base, extra = self.base, self._extra_ids
            return tuple([table_ids[i] if i < base else extra[i - base] for i in r])
        if len(r) < 2:  # itemgetter of one index gives the item, of none raises
            return tuple(map(table_ids.__getitem__, r))
        return itemgetter(*r)(table_ids)


class Pool:
    """A batch's candidates: keys (N,) call * width + index, grouped by call; rows (N,) their
    item indices, call (N,) their call, sizes (B,) rows per call."""

    def __init__(
        self,
        keys: np.ndarray,
        width: int,
        n_calls: int,
        by_key: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        """by_key: (the keys sorted, each one's place in `keys`) when known already."""
        self.keys = keys
        self.width = width
        self.n = len(keys)
        self.rows = keys % width
        self.call = keys // width
        self.sizes = np.bincount(self.call, minlength=n_calls)
        if by_key is None:
            order = keys.argsort(kind="stable")
            by_key = keys[order], order
        self._sorted, self._order = by_key

    @classmethod
    def first_seen(
        cls,
        calls: np.ndarray,
        rows: np.ndarray,
        excluded: np.ndarray,
        width: int,
        n_calls: int,
    ) -> Pool:
        """The pool of proposals (calls[i], rows[i]), grouped by call, each call's in
        proposal order: each candidate once, where it was first proposed, without the keys
        in `excluded`."""
        keys = calls * width + rows
        by_key = keys.argsort(kind="stable")  # equal keys: the first proposal first
        distinct = np.empty(len(keys), bool)
        distinct[:1] = True
        np.not_equal(keys[by_key[1:]], keys[by_key[:-1]], out=distinct[1:])
        unique, first = keys[by_key[distinct]], by_key[distinct]
        if len(excluded) and len(unique):
            j = np.minimum(unique.searchsorted(excluded), len(unique) - 1)
            proposed = np.ones(len(unique), bool)
            proposed[j[unique[j] == excluded]] = False
            unique, first = unique[proposed], first[proposed]
        order = first.argsort()  # the pool's keys in proposal order
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        return cls(keys[first[order]], width, n_calls, (unique, place))

    def find(self, calls: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(m,) the column of each (calls[i], rows[i]) in the pool; n where it is not in it
        (the spare column that scatters write to)."""
        keys = calls * self.width + rows
        if self.n == 0:
            return np.zeros(len(keys), np.int64)
        j = self._sorted.searchsorted(keys)
        np.minimum(j, self.n - 1, out=j)
        return np.where(self._sorted[j] == keys, self._order[j], self.n)
