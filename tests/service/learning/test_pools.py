"""Batch pools against dict.fromkeys per call, and BatchIds' temporary indices."""

from __future__ import annotations

import numpy as np

from service.learning.items import ItemTable
from service.learning.pools import BatchIds, Pool


def test_a_pool_is_each_calls_proposals_once_in_first_seen_order_without_the_excluded():
    rng = np.random.default_rng(0)
    width, n_calls = 50, 4
    sizes = [30, 0, 12, 25]
    calls = np.repeat(np.arange(n_calls), sizes)
    rows = rng.integers(0, 20, len(calls))  # many repeats within a call
    excluded = {0: {3, 7}, 3: {1}}
    keys = np.array([c * width + r for c, rs in excluded.items() for r in rs], np.int64)
    pool = Pool.first_seen(calls, rows, keys, width, n_calls)
    for c in range(n_calls):
        proposed = rows[calls == c].tolist()
        expected = [r for r in dict.fromkeys(proposed) if r not in excluded.get(c, set())]
        assert pool.rows[pool.call == c].tolist() == expected
        assert pool.sizes[c] == len(expected)
    # find: each (call, row) to its column; pool.n where the call's pool lacks it
    at = pool.find(np.array([0, 0, 2]), np.array([3, int(pool.rows[0]), 99]))
    assert at.tolist() == [pool.n, 0, pool.n]


def test_ids_without_an_index_get_one_for_the_batch_and_map_back():
    table = ItemTable()
    table.acquire_all(["a", "b"])
    names = BatchIds(table)
    rows = names.rows(["b", "new", "a", "new"])
    assert rows[1] == rows[3] == 2 and names.width == 3 and len(table) == 2
    assert list(names.ids(rows)) == ["b", "new", "a", "new"]
    assert list(names.ids(rows[:1])) == ["b"] and list(names.ids(rows[:0])) == []
