"""The catalogue (announced items, expiry, open admission, the file) and the learning guard's
rules on their own, without a server; the configuration flags that set them."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import load_config
from service.learning.catalogue import (
    Catalogue,
    CatalogueConfig,
    CatalogueFull,
    read_catalogue_file,
)
from service.learning.guard import GuardConfig, LearningGuard


def test_announced_items_are_admitted_until_they_expire():
    catalogue = Catalogue()
    assert catalogue.put([("a", 0.0), ("b", 100.0)], now=10.0) == 2
    assert catalogue.admits("a", 10.0) and catalogue.admits("b", 99.0)
    assert not catalogue.admits("b", 100.0) and catalogue.admits("a", 1e12)
    assert catalogue.sizes() == {"announced": 1, "open": 0}


def test_announcing_again_replaces_the_expiry_and_expire_drops_only_the_due():
    catalogue = Catalogue()
    catalogue.put([("a", 50.0), ("b", 60.0)], now=0.0)
    assert catalogue.put([("a", 0.0)], now=1.0) == 0  # not new: its expiry is replaced
    assert catalogue.expire(55.0) == 0 and catalogue.expire(70.0) == 1
    assert catalogue.admits("a", 1e9) and not catalogue.admits("b", 0.0)


def test_an_expiry_already_past_withdraws_the_item_instead_of_announcing_it():
    catalogue = Catalogue()
    assert catalogue.put([("sale-1", 5.0), ("a", 0.0)], now=10.0) == 1
    assert len(catalogue) == 1 and not catalogue.admits("sale-1", 10.0)
    assert catalogue.put([("a", 9.0)], now=10.0) == 0  # announced, now ended
    assert len(catalogue) == 0 and not catalogue.admits("a", 10.0)


def test_a_full_catalogue_refuses_the_whole_call():
    catalogue = Catalogue(CatalogueConfig(max_items=2))
    catalogue.put([("a", 0.0)], now=0.0)
    with pytest.raises(CatalogueFull, match="--catalogue-max-items 2"):
        catalogue.put([("b", 0.0), ("c", 0.0)], now=0.0)
    assert len(catalogue) == 1 and catalogue.remove(["a", "x"]) == 1


def test_open_mode_needs_distinct_sessions_and_distinct_clients():
    catalogue = Catalogue(CatalogueConfig(open=True, open_min_sessions=3, open_min_clients=2))
    assert not any(catalogue.observe("n", f"s{i}", "one", 0.0) for i in range(50))
    assert not catalogue.observe("n", "", "two", 0.0)  # no session id: does not count
    assert catalogue.observe("n", "s99", "two", 0.0)
    assert catalogue.admits("n", 1.0) and catalogue.sizes()["open"] == 1
    assert not catalogue.admits("n", CatalogueConfig().open_ttl_s + 1.0)
    closed = Catalogue()
    assert not any(closed.observe("n", f"s{i}", f"c{i}", 0.0) for i in range(50))


def test_open_mode_forgets_the_least_recent_candidates_beyond_its_bound():
    catalogue = Catalogue(CatalogueConfig(open=True, open_min_sessions=2, open_min_clients=1,
                                          max_pending=2))  # fmt: skip
    catalogue.observe("old", "s1", "", 0.0)
    catalogue.observe("x", "s1", "", 0.0)
    catalogue.observe("y", "s1", "", 0.0)  # "old" is dropped: its sighting is forgotten
    assert not catalogue.observe("old", "s2", "", 0.0)
    assert catalogue.observe("y", "s2", "", 0.0)


def test_the_file_replaces_what_it_announced_but_not_what_put_items_did(tmp_path: Path):
    listing = tmp_path / "items.txt"
    listing.write_text("# comment\na\nb\t4102444800\n\n")
    assert read_catalogue_file(listing, 128) == {"a": 0.0, "b": 4102444800.0}
    catalogue = Catalogue()
    catalogue.replace_file_items({"a": 0.0, "b": 0.0}, now=0.0)
    catalogue.put([("b", 0.0)], now=0.0)  # announced by PutItems as well
    assert catalogue.replace_file_items({"c": 0.0}, now=0.0) == (1, 1)
    assert [catalogue.admits(i, 1.0) for i in "abc"] == [False, True, True]
    listing.write_text("a\tsoon\n")
    with pytest.raises(ValueError, match="items.txt:1: 'soon' is not an expiry"):
        read_catalogue_file(listing, 128)


def test_the_guard_teaches_only_new_admitted_unrepeated_clicks_under_the_caps():
    guard = LearningGuard(GuardConfig(session_clicks=3, client_clicks=2))
    known = {"a", "b", "c", "d"}
    assert guard.select("", ["a"], "", 0.0, known) == []
    assert guard.select("s", ["a", "b"], "", 0.0, known) == [(1, "s")]  # a new session: its last
    assert guard.select("s", ["a", "b"], "", 0.0, known) == []  # the same call again
    assert guard.select("s", ["a", "b", "x", "c"], "", 0.0, known) == [(3, "")]  # x held back
    assert guard.select("s", ["a", "b", "x", "c", "d", "a"], "", 0.0, known) == [(4, "")]
    assert guard.select("t", ["a"], "k", 0.0, known) == [(0, "t")]
    assert guard.select("u", ["a"], "k", 0.0, known) == []  # the same transition, same client
    assert guard.select("v", ["b"], "k", 0.0, known) == [(0, "v")]
    assert guard.select("w", ["c"], "k", 0.0, known) == []  # the client's 2 per window
    assert guard.select("w2", ["c"], "k", 61.0, known) == [(0, "w2")]  # a new window
    assert guard.stats.not_learnt == {
        "no_session": 1, "refused": 0, "unknown_item": 1, "repeat_transition": 1,
        "session_cap": 1, "client_cap": 1,
    }  # fmt: skip


def test_the_guard_keeps_a_bounded_number_of_sessions_and_clients():
    guard = LearningGuard(GuardConfig(max_sessions=10, max_clients=10))
    for i in range(1000):
        guard.select(f"s{i}", ["a"], f"c{i}", float(i) / 1000, {"a"})
    assert len(guard._sessions) == 10 and len(guard._clients) == 10


def test_the_safety_settings_come_from_flags_and_environment_variables():
    env = {
        "RECSYS_MODEL_DIR": "/m", "RECSYS_CATALOGUE_TOKEN_FILE": "/run/token",
        "RECSYS_CATALOGUE_FILE": "/etc/items.txt", "RECSYS_CATALOGUE_MAX_ITEMS": "5",
        "RECSYS_CATALOGUE_OPEN": "1", "RECSYS_CATALOGUE_OPEN_MIN_SESSIONS": "4",
        "RECSYS_CATALOGUE_OPEN_MIN_CLIENTS": "1", "RECSYS_LEARN_SESSION_CLICKS": "7",
        "RECSYS_LEARN_CLIENT_CLICKS": "8", "RECSYS_LEARN_CLIENT_WINDOW_S": "30",
        "RECSYS_LEARN_MAX_CLIENTS": "9",
    }  # fmt: skip
    cfg = load_config([], env)
    assert cfg.catalogue_token_file == Path("/run/token") and cfg.catalogue_token is None
    assert (cfg.catalogue_file, cfg.catalogue_max_items) == (Path("/etc/items.txt"), 5)
    assert (cfg.catalogue_open, cfg.catalogue_open_min_sessions) == (True, 4)
    assert cfg.catalogue_open_min_clients == 1
    assert (cfg.learn_session_clicks, cfg.learn_client_clicks) == (7, 8)
    assert (cfg.learn_client_window_s, cfg.learn_max_clients) == (30.0, 9)
    default = load_config(["--model", "/m"], {})
    assert (default.catalogue_token, default.catalogue_open) == (None, False)
    assert (default.learn_session_clicks, default.learn_client_clicks) == (50, 20)
    assert default.learn_client_window_s == 60.0
    flags = load_config(["--model", "/m", "--catalogue-token", "t", "--catalogue-open"], {})
    assert (flags.catalogue_token, flags.catalogue_open) == ("t", True)
    with pytest.raises(ValueError, match="catalogue_token and catalogue_token_file"):
        load_config(["--model", "/m", "--catalogue-token", "t"], env)
