"""The ItemTable: indices held and released, reused once free, and lookups that add nothing."""

from __future__ import annotations

import numpy as np

from service.learning.items import ItemTable


def test_an_id_keeps_its_index_while_held_and_frees_it_after_its_last_holder():
    table = ItemTable()
    a = table.acquire("a")
    assert table.acquire("a") == a  # held twice
    b = table.acquire("b")
    table.release(a)
    assert table.get("a") == a and table.ids[a] == "a"
    table.release(a)
    assert table.get("a") == -1
    assert table.acquire("c") == a  # the free index is reused, not a new one
    assert len(table) == 2 and table.ids[b] == "b"


def test_find_gives_minus_one_for_unknown_ids_and_adds_nothing():
    table = ItemTable()
    rows = table.acquire_all(["x", "y"])
    found = table.find(["y", "nope", "x"])
    assert found.tolist() == [rows[1], -1, rows[0]]
    assert found.dtype == np.int64 and len(table) == 2


def test_the_table_stays_within_what_is_held_however_many_ids_pass():
    table = ItemTable()
    for k in range(1000):
        table.release(table.acquire(f"i{k}"))
    assert len(table) == 1


def test_an_index_given_to_another_id_is_no_longer_what_it_meant_before():
    table = ItemTable()
    a = table.acquire("a")
    seen = table.generation  # an answer noting index a now
    assert table.since(a, seen)
    table.acquire("b")
    assert table.since(a, seen)  # other ids coming in change nothing for a
    table.release(a)
    assert table.acquire("c") == a  # a's index reused
    assert not table.since(a, seen)
