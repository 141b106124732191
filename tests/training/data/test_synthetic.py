"""training.data.synthetic and training.data.churn: schema, determinism, and that the clicks
carry the structure they are drawn with (checked against the catalogue's latent truth, not
against fixed figures); with churn, that no click precedes its item's release and that a day's
next clicks go to brand-new items about as often as on a news site."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from training.__main__ import main
from training.data.churn import Churn, new_item_share
from training.data.logs import read_events
from training.data.synthetic import DAY, START_TIME, generate, generate_to_dir

SMALL = dict(n_items=500, n_sessions=6000, n_categories=10, days=5.0)
CHURNED = dict(n_items=800, n_sessions=8000, n_categories=20, days=6.0)


@pytest.fixture(scope="module")
def cat():
    return generate(**SMALL, seed=3)


def _index(cat) -> np.ndarray:
    """Item index of every click."""
    lookup = {item: i for i, item in enumerate(cat.item_ids)}
    return cat.events.ItemId.map(lookup).to_numpy()


def _consecutive(cat, order: int = 2) -> list[np.ndarray]:
    """Aligned arrays of `order` consecutive clicks inside one session (first = oldest)."""
    items, sessions = _index(cat), cat.events.SessionId.to_numpy()
    n = len(items) - order + 1
    same = np.ones(n, dtype=bool)
    for lag in range(1, order):
        same &= sessions[lag : lag + n] == sessions[:n]
    return [items[lag : lag + n][same] for lag in range(order)]


def test_same_seed_gives_identical_data_and_another_seed_does_not():
    a, b, c = generate(**SMALL, seed=7), generate(**SMALL, seed=7), generate(**SMALL, seed=8)
    pd.testing.assert_frame_equal(a.events, b.events)
    for name in ("item_category", "item_popularity", "item_style", "item_variant", "successors"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not a.events.ItemId.equals(c.events.ItemId)


def test_events_have_the_click_log_schema(cat):
    ev = cat.events
    assert list(ev.columns) == ["SessionId", "ItemId", "Time"]
    assert ev.SessionId.map(type).eq(str).all() and ev.ItemId.map(type).eq(str).all()
    assert ev.Time.dtype == np.float64
    assert set(ev.ItemId) <= set(cat.item_ids)
    assert all(i.startswith("i") and i[1:].isdigit() for i in cat.item_ids)
    assert len(set(cat.item_ids)) == SMALL["n_items"]
    assert ev.SessionId.nunique() == SMALL["n_sessions"]


def test_latent_attributes_have_one_value_per_item_in_range(cat):
    n, k = SMALL["n_items"], cat.successors.shape[1]
    assert cat.item_category.shape == (n,) and cat.item_category.max() < SMALL["n_categories"]
    assert cat.item_category.min() >= 0
    assert np.isclose(cat.item_popularity.sum(), 1.0) and (cat.item_popularity > 0).all()
    assert ((cat.item_style >= 0) & (cat.item_style < 1)).all()
    assert ((cat.item_variant >= 0) & (cat.item_variant < k)).all()
    assert cat.successors.shape == (n, k) and (cat.successors != np.arange(n)[:, None]).all()
    frame = cat.items_frame()
    assert list(frame.columns[:4]) == ["ItemId", "category", "popularity", "style"]


def test_sessions_have_at_least_two_clicks_and_geometric_mean_length():
    cat = generate(**{**SMALL, "n_sessions": 20_000}, seed=1, mean_length=6.0)
    lengths = cat.events.groupby("SessionId").size()
    assert lengths.min() >= 2
    # 1 + geometric(p = 1 / 5) has mean 6; the cap at 50 removes a negligible tail
    assert abs(lengths.mean() - 6.0) < 0.15
    assert (lengths == 2).mean() == pytest.approx(0.2, abs=0.02)


def test_times_spread_over_the_days_in_session_order(cat):
    ev = cat.events
    assert ev.Time.min() >= START_TIME
    starts = ev.groupby("SessionId", sort=False).Time.min().to_numpy()
    assert starts.max() <= START_TIME + SMALL["days"] * DAY
    assert (np.diff(starts) >= 0).all()  # sessions come in start order
    # every day holds sessions, so splitting off the last day leaves a test set
    days_hit = np.unique(((starts - START_TIME) // DAY).astype(int))
    np.testing.assert_array_equal(days_hit, np.arange(int(SMALL["days"])))
    inside = ev.groupby("SessionId", sort=False).Time.apply(lambda t: np.all(np.diff(t) > 0))
    assert inside.all()


def test_popularity_is_skewed_and_follows_the_latent_weights(cat):
    counts = np.bincount(_index(cat), minlength=SMALL["n_items"])
    share = np.sort(counts)[::-1].cumsum() / counts.sum()
    assert share[len(share) // 10 - 1] > 0.35  # top 10% of items: far more than 10% of clicks
    by_weight = np.argsort(-cat.item_popularity)
    top, bottom = by_weight[:50], by_weight[-50:]
    assert counts[top].sum() > 5 * counts[bottom].sum()


def test_next_click_depends_on_the_previous_one_far_beyond_popularity(cat):
    prev, nxt = _consecutive(cat)
    followed = (cat.successors[prev] == nxt[:, None]).any(axis=1).mean()
    # what popularity alone would give: the chance that a popularity draw is a successor
    by_chance = cat.item_popularity[cat.successors[prev]].sum(axis=1).mean()
    assert followed > 0.4 and followed > 10 * by_chance
    # for frequent previous items, the next-click distribution is far from the marginal one
    marginal = np.bincount(nxt, minlength=SMALL["n_items"]) / len(nxt)
    distances = []
    for item in np.argsort(-np.bincount(prev))[:20]:
        cond = np.bincount(nxt[prev == item], minlength=SMALL["n_items"])
        distances.append(0.5 * np.abs(cond / cond.sum() - marginal).sum())
    assert np.mean(distances) > 0.5


def test_which_successor_follows_depends_on_the_click_before(cat):
    before, prev, nxt = _consecutive(cat, order=3)
    steered = cat.successors[prev, cat.item_variant[before]] == nxt
    # the same with the variants shuffled between items: what a first-order model sees
    shuffled = np.random.default_rng(0).permutation(cat.item_variant)
    unsteered = cat.successors[prev, shuffled[before]] == nxt
    assert steered.mean() > 2 * unsteered.mean()


def test_successors_share_the_category_and_lie_near_in_style(cat):
    succ = cat.successors
    same = cat.item_category[succ] == cat.item_category[:, None]
    assert same.mean() > 0.8
    gap = np.abs(cat.item_style[succ] - cat.item_style[:, None])
    gap = np.minimum(gap, 1 - gap)[same]  # distance around the circle
    # 10 neighbours either side of ~50 items per category: within ~0.2 of the circle
    assert np.median(gap) < 0.15


def test_invalid_parameters_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="n_categories"):
        generate(n_items=10, n_sessions=5, n_categories=20)
    with pytest.raises(ValueError, match="p_follow"):
        generate(n_items=10, n_sessions=5, n_categories=2, p_follow=0.8, p_intent=0.5)


def test_a_large_catalogue_is_generated_with_every_session_drawn():
    cat = generate(n_items=100_000, n_sessions=20_000, n_categories=200, seed=0)
    assert cat.n_items == 100_000 and cat.successors.shape[0] == 100_000
    assert cat.events.SessionId.nunique() == 20_000


def test_generate_to_dir_writes_a_time_split_readable_by_the_data_module(tmp_path):
    paths = generate_to_dir(tmp_path, n_items=300, n_sessions=3000, seed=2, days=4.0)
    events, train, test = (read_events(paths[n]) for n in ("events", "train", "test"))
    items = pd.read_csv(paths["items"], sep="\t")
    assert len(items) == 300 and {"ItemId", "category", "style"} <= set(items.columns)
    assert set(train.SessionId).isdisjoint(test.SessionId)
    assert set(test.ItemId) <= set(train.ItemId)
    last_day = events.Time.max() - DAY
    assert (test.groupby("SessionId").Time.max() > last_day).all()
    assert (train.groupby("SessionId").Time.max() <= last_day).all()
    assert test.groupby("SessionId").size().min() >= 2


def _digest(cat) -> str:
    h = hashlib.sha256()
    h.update("\n".join(cat.events.SessionId + " " + cat.events.ItemId).encode())
    h.update(cat.events.Time.to_numpy(np.float64).tobytes())
    arrays = (cat.item_category, cat.item_popularity, cat.item_style, cat.item_variant)
    for a in (*arrays, cat.successors):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_without_churn_the_output_is_bit_identical_to_the_generator_before_churn():
    # digest and rows computed with the generator as it was before the churn option; the same
    # on every CPU since the popularity's power goes through the C library (training.data.libm)
    cat = generate(n_items=200, n_sessions=1000, n_categories=8, days=3.0, seed=11)
    assert _digest(cat) == "d67645a0c4b35491956e4b74bafc862d6e8d0a2c8db64c174f4c4313644cb11c"
    rows = cat.events.iloc[[0, 1, 3000, -1]]
    assert rows.ItemId.tolist() == ["i00000", "i00074", "i00112", "i00124"]
    assert rows.Time.tolist() == [
        1700000217.6403718, 1700000269.8495884, 1700135557.8488734, 1700259724.648721
    ]  # fmt: skip
    assert cat.item_release is None and "release" not in cat.items_frame().columns


@pytest.fixture(scope="module")
def churned():
    return generate(**CHURNED, seed=5, churn=Churn())


def test_churned_data_are_the_same_for_the_same_seed_and_differ_for_another():
    a, b = generate(**CHURNED, seed=2, churn=Churn()), generate(**CHURNED, seed=2, churn=Churn())
    c = generate(**CHURNED, seed=3, churn=Churn())
    pd.testing.assert_frame_equal(a.events, b.events)
    np.testing.assert_array_equal(a.item_release, b.item_release)
    np.testing.assert_array_equal(a.successors, b.successors)
    assert not a.events.ItemId.equals(c.events.ItemId)


def test_the_stock_is_there_from_the_start_and_new_items_come_every_day(churned):
    n_new = Churn().n_new(CHURNED["days"])
    assert churned.n_items == CHURNED["n_items"] + n_new
    release = churned.item_release
    assert (release[: CHURNED["n_items"]] < START_TIME).all()
    assert np.isinf(churned.item_half_life[: CHURNED["n_items"]]).all()
    new = release[CHURNED["n_items"] :]
    per_day = np.bincount(((new - START_TIME) // DAY).astype(int))
    assert len(per_day) == CHURNED["days"] and per_day.min() > 0.8 * Churn().new_items_per_day
    half_lives_hours = churned.item_half_life[CHURNED["n_items"] :] / 3600
    assert half_lives_hours.min() >= 2 and half_lives_hours.max() <= 7 * 24
    assert {"release", "half_life_hours"} <= set(churned.items_frame().columns)


def test_no_item_is_clicked_before_its_release(churned):
    index = _index(churned)
    assert (churned.events.Time.to_numpy() > churned.item_release[index]).all()
    # and the clicks do reach the new items, soon after their release
    released_in_log = churned.item_release[index] >= START_TIME
    assert released_in_log.mean() > 0.5


def test_a_days_next_clicks_go_to_items_new_that_day_as_on_a_news_site(churned):
    # the last day is the test day of split_by_time; the others show it is no accident
    assert 0.2 <= new_item_share(churned.events) <= 0.35
    shares = [new_item_share(churned.events, d) for d in range(int(CHURNED["days"]) - 1)]
    assert 0.2 <= np.mean(shares) <= 0.35 and min(shares) > 0.15


def test_new_item_share_counts_targets_on_items_first_clicked_that_day():
    end = START_TIME + 3 * DAY
    rows = [  # (session, item, hours before the end)
        ("z", "old", 50.0),  # first click of "old", two days before the end; no target
        ("a", "old", 30.0), ("a", "old", 29.9),  # the day before: a target, not a new item
        ("b", "old", 5.0), ("b", "new", 4.9), ("b", "old", 4.8),  # targets: new, old
        ("c", "new", 3.0), ("c", "new", 2.9), ("c", "fresh", 0.0),  # targets: new, fresh
    ]  # fmt: skip
    events = pd.DataFrame(rows, columns=["SessionId", "ItemId", "hours"])
    events["Time"] = end - events.pop("hours") * 3600
    assert new_item_share(events) == pytest.approx(3 / 4)
    assert new_item_share(events, days_ago=1) == 0.0  # its one target: "old", seen that day
    assert np.isnan(new_item_share(events, days_ago=2))


def test_churned_clicks_keep_the_skew_the_sequences_and_some_repeats(churned):
    counts = np.bincount(_index(churned), minlength=churned.n_items)
    share = np.sort(counts)[::-1].cumsum() / counts.sum()
    assert share[len(share) // 10 - 1] > 0.35
    prev, nxt = _consecutive(churned)
    followed = (churned.successors[prev] == nxt[:, None]).any(axis=1).mean()
    by_chance = churned.item_popularity[churned.successors[prev]].sum(axis=1).mean()
    assert followed > 0.15 and followed > 10 * by_chance
    repeats = churned.events.duplicated(["SessionId", "ItemId"]).mean()
    assert 0.1 < repeats < 0.4


def test_invalid_churn_parameters_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="stock_share"):
        Churn(stock_share=0.0)
    with pytest.raises(ValueError, match="p_repeat"):
        Churn(p_repeat=1.0)


def test_cli_generate_with_churn_writes_the_usual_files(tmp_path, capsys):
    main(["generate", "--out", str(tmp_path), "--items", "300", "--sessions", "3000",
          "--churn", "--days", "4", "--new-items-per-day", "100"])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.tsv", "items.tsv", "test.tsv", "train.tsv"
    ]  # fmt: skip
    items = pd.read_csv(tmp_path / "items.tsv", sep="\t")
    assert len(items) == 300 + 400 and "release" in items.columns
    assert "of next clicks are on items first seen that day" in capsys.readouterr().out
