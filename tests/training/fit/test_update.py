"""training.fit.update: the vocabulary grows at the end, the parent's rows and optimiser state
carry over untouched, new rows start as documented, popularity adds up, lineage is
recorded, the updated model learns the new items, and it exports with them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from service.runtime import ExportedModel
from tests.conftest import markov_sessions
from training.__main__ import main
from training.config import Config
from training.data.churn import Churn
from training.data.logs import ItemVocab, Sessions, item_popularity, preprocess, write_events
from training.export import export_model
from training.fit.train import fit, load_model, save_model
from training.fit.update import UpdateOptions, evaluate_by_target, save_update, update
from training.models.architectures import build_model
from training.models.bloom import bloom_positions

N_OLD = 30
TINY = dict(layers=(8,), batch_size=8, n_sample=16, sample_store_size=4096, threads=1)
OUTPUT = {"Wy.weight", "By.weight"}
VARIANTS = {  # configuration, the tensors with one row per item
    "shared embedding": (dict(), OUTPUT),
    "separate embedding": (
        dict(constrained_embedding=False, embedding=6, layers=(8, 5)),
        OUTPUT | {"E.weight"},
    ),
    "one-hot input": (
        dict(constrained_embedding=False, embedding=0),
        OUTPUT | {"first.input_gates.weight"},
    ),
    # Bloom-coded tables have m rows whatever the item count; the bit table grows
    "bloom input": (
        dict(bloom_bits=0.5, bloom_hashes=2, bloom_on="input"),
        OUTPUT | {"item_positions"},
    ),
    "bloom both": (dict(bloom_bits=0.5, bloom_hashes=2, bloom_on="both"), {"item_positions"}),
    "p-RNN concat": (
        dict(architecture="concat"),
        {
            "item_features",
            "feature_net.id_gates.weight",
            "feature_net.Wy.weight",
            "feature_net.By.weight",
        },
    ),
}


def _parent(root: Path, n_items: int = N_OLD, optimizer: bool = False, **config) -> Path:
    """A saved model over items i0..i{n-1} with popularity 1..n: untrained, or with
    `optimizer` after a short run, so that it has an optimiser state."""
    torch.manual_seed(0)
    cfg = Config(**{**TINY, **config})
    model = build_model(n_items, cfg).eval()
    state = None
    if optimizer:  # one short run, for an optimiser state to carry over
        model, history = fit(markov_sessions(n_items, 40, seed=0), n_items, cfg, False, model)
        state = history.optimizer_state
    vocab = ItemVocab([f"i{i}" for i in range(n_items)])
    popularity = np.arange(1, n_items + 1, dtype=np.int64)
    save_model(root, model, cfg, vocab, popularity, {"trained_at": "T0"}, state)
    return root


def _new_clicks(seed: int = 0, n_new: int = 4, support: int = 6) -> pd.DataFrame:
    """Sessions over old items i0..i29 and new items n0..n{k-1}, each new one `support` times,
    plus one item "rare" clicked twice."""
    rng = np.random.default_rng(seed)
    items = [f"n{k}" for k in range(n_new) for _ in range(support)] + ["rare", "rare"]
    items += [f"i{i}" for i in rng.integers(0, N_OLD, 60)]
    items = list(rng.permutation(items))
    sessions = [f"s{j // 4}" for j in range(len(items))]
    return pd.DataFrame(
        {"SessionId": sessions, "ItemId": items, "Time": 1e9 + np.arange(len(items))}
    )


def _zero_epochs(parent: Path, clicks: pd.DataFrame, **kwargs):
    return update(parent, clicks, ["n_epochs=0"], **kwargs)


def test_the_vocabulary_grows_at_the_end_and_old_ids_keep_their_indices(tmp_path):
    clicks = _new_clicks()
    updated = _zero_epochs(_parent(tmp_path / "p"), clicks)
    ids = updated.vocab.ids.tolist()
    assert ids[:N_OLD] == [f"i{i}" for i in range(N_OLD)]
    first_seen = list(dict.fromkeys(clicks.ItemId[clicks.ItemId.str.startswith("n")]))
    assert ids[N_OLD:] == first_seen and "rare" not in ids  # 2 clicks < min_item_support


@pytest.mark.parametrize(("config", "item_tables"), VARIANTS.values(), ids=VARIANTS.keys())
def test_before_any_training_step_the_old_rows_are_the_parents_bit_for_bit(
    tmp_path, config, item_tables
):
    features = None
    if config.get("architecture"):
        raw = np.random.default_rng(0).normal(size=(N_OLD + 4, 5))
        np.save(tmp_path / "f.npy", raw[:N_OLD])
        config, features = {**config, "features": str(tmp_path / "f.npy")}, raw
    parent_dir = _parent(tmp_path / "p", **config)
    save_update(tmp_path / "u", _zero_epochs(parent_dir, _new_clicks(), features=features))
    parent, child = load_model(parent_dir), load_model(tmp_path / "u")
    grown = set()
    for name, old in parent.model.state_dict().items():
        new = child.model.state_dict()[name]
        if old.dim() == 0:  # a scalar buffer (Bloom's row_scale)
            assert torch.equal(new, old), name
            continue
        if new.shape != old.shape:
            assert new.shape == (len(child.vocab), *old.shape[1:]), name
            grown.add(name)
        assert torch.equal(new[: len(old)], old), name
    assert grown == item_tables


def test_new_rows_are_the_popularity_weighted_mean_plus_the_reference_init(tmp_path):
    parent_dir = _parent(tmp_path / "p", constrained_embedding=False, embedding=6)
    clicks = _new_clicks()
    mean = _zero_epochs(parent_dir, clicks).model.state_dict()
    init = _zero_epochs(parent_dir, clicks, options=UpdateOptions(new_rows="init"))
    init_state = init.model.state_dict()
    parent = load_model(parent_dir)
    torch.manual_seed(parent.config.seed)
    fresh = build_model(len(init.vocab), parent.config).state_dict()
    weights = np.arange(1, N_OLD + 1)
    for name in ("Wy.weight", "By.weight", "E.weight"):
        old = parent.model.state_dict()[name].numpy()
        expected = np.average(old, axis=0, weights=weights)
        assert torch.equal(init_state[name][N_OLD:], fresh[name][N_OLD:]), name
        offset = (mean[name][N_OLD:] - init_state[name][N_OLD:]).numpy()
        np.testing.assert_allclose(offset, np.broadcast_to(expected, offset.shape), atol=1e-6)


def test_popularity_adds_the_new_clicks_to_the_parents_counts(tmp_path):
    clicks = _new_clicks()
    updated = _zero_epochs(_parent(tmp_path / "p"), clicks)
    counted = clicks[clicks.ItemId != "rare"].ItemId.value_counts()
    expected = np.array([counted.get(i, 0) for i in updated.vocab.ids])
    expected[:N_OLD] += np.arange(1, N_OLD + 1)  # the parent's counts
    np.testing.assert_array_equal(updated.popularity, expected)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_a_saved_optimiser_state_continues_training_exactly(tmp_path, optimizer):
    data = markov_sessions(20, 60, seed=3)
    cfg = Config(**{**TINY, "n_sample": 0, "momentum": 0.3, "optimizer": optimizer})
    torch.manual_seed(0)
    straight, _ = fit(data, 20, Config(**{**cfg.to_dict(), "n_epochs": 2}), False)
    torch.manual_seed(0)
    half, history = fit(data, 20, Config(**{**cfg.to_dict(), "n_epochs": 1}), False)
    vocab = ItemVocab([f"i{i}" for i in range(20)])
    save_model(tmp_path, half, cfg, vocab, item_popularity(data, 20), {}, history.optimizer_state)
    saved = load_model(tmp_path)
    one_more = Config(**{**cfg.to_dict(), "n_epochs": 1})
    resumed, _ = fit(data, 20, one_more, False, saved.model, saved.optimizer_state)
    resumed_state = resumed.state_dict()
    for name, weights in straight.state_dict().items():
        assert torch.allclose(weights, resumed_state[name], atol=1e-6), name


def test_the_optimiser_state_carries_over_with_zero_rows_for_new_items(tmp_path):
    parent_dir = _parent(tmp_path / "p", optimizer=True, momentum=0.2)
    parent = load_model(parent_dir)
    updated = _zero_epochs(parent_dir, _new_clicks())
    assert updated.meta["update"]["optimizer_state_carried"]
    for name in ("Wy.weight", "By.weight"):
        for key in ("acc", "mom"):
            old, new = parent.optimizer_state[name][key], updated.optimizer_state[name][key]
            assert torch.equal(new[:N_OLD], old) and not new[N_OLD:].any()
            assert old.any()


def test_a_model_file_without_optimiser_state_still_loads_and_updates(tmp_path):
    parent_dir = _parent(tmp_path / "p")
    assert load_model(parent_dir).optimizer_state is None
    updated = update(parent_dir, _new_clicks(), ["n_epochs=1"])
    assert not updated.meta["update"]["optimizer_state_carried"]
    assert np.isfinite(updated.meta["epochs"][0]["loss"]) and updated.optimizer_state


def test_lineage_names_the_parent_its_digest_the_new_clicks_and_the_time(tmp_path):
    parent_dir = _parent(tmp_path / "p")
    clicks_file = tmp_path / "day1.tsv"
    write_events(_new_clicks(), clicks_file)
    main(["update", "--model", str(parent_dir), "--train", str(clicks_file),
          "--out", str(tmp_path / "u1"), "--param", "n_epochs=1", "--quiet"])  # fmt: skip
    main(["update", "--model", str(tmp_path / "u1"), "--train", str(clicks_file),
          "--out", str(tmp_path / "u2"), "--param", "n_epochs=1", "--quiet"])  # fmt: skip
    meta = json.loads((tmp_path / "u2" / "config.json").read_text())["meta"]
    sha = hashlib.sha256((tmp_path / "u1" / "model.pt").read_bytes()).hexdigest()
    assert meta["parent"]["path"] == str((tmp_path / "u1").resolve())
    assert meta["parent"]["sha256"] == sha
    assert [p["path"] for p in meta["lineage"]] == [
        str(parent_dir.resolve()), str((tmp_path / "u1").resolve())
    ]  # fmt: skip
    assert meta["new_clicks"]["sha256"] == hashlib.sha256(clicks_file.read_bytes()).hexdigest()
    assert meta["train_file"] == str(clicks_file.resolve()) and meta["trained_at"].endswith("Z")
    assert load_model(tmp_path / "u2").meta == meta


def test_the_update_refuses_to_change_the_shape_of_the_weights(tmp_path):
    with pytest.raises(ValueError, match="layers fixes the shapes"):
        update(_parent(tmp_path / "p"), _new_clicks(), ["layers=16"])


def test_a_bloom_model_gives_new_items_their_hashed_bits_with_the_parents_m(tmp_path):
    parent_dir = _parent(tmp_path / "p", bloom_bits=0.5, bloom_hashes=2, bloom_on="both")
    parent = load_model(parent_dir)
    updated = _zero_epochs(parent_dir, _new_clicks())
    n_bits = parent.model.n_bits
    assert updated.model.n_bits == n_bits and updated.config.bloom_bits == n_bits
    expected = bloom_positions(range(len(updated.vocab)), n_bits, 2)
    np.testing.assert_array_equal(updated.model.item_positions.numpy(), expected)
    assert updated.model.Wy.weight.shape == parent.model.Wy.weight.shape


PRNN = dict(architecture="concat", layers=(8,))


def _prnn_parent(root: Path, raw: np.ndarray) -> Path:
    np.save(root.parent / "features.npy", raw[:N_OLD])
    return _parent(root, **PRNN, features=str(root.parent / "features.npy"))


def test_a_prnn_model_refuses_new_items_without_their_features(tmp_path):
    raw = np.random.default_rng(0).normal(size=(N_OLD + 4, 5)) * 3 + 1
    parent_dir = _prnn_parent(tmp_path / "p", raw)
    with pytest.raises(ValueError, match="pass --features FILE"):
        _zero_epochs(parent_dir, _new_clicks())
    with pytest.raises(ValueError, match="parent's items first"):
        _zero_epochs(parent_dir, _new_clicks(), features=raw[::-1].copy())
    np.save(tmp_path / "all.npy", raw)
    updated = _zero_epochs(parent_dir, _new_clicks(), features=tmp_path / "all.npy")
    assert updated.config.features == str(tmp_path / "all.npy")
    features = updated.model.item_features
    old = load_model(parent_dir).model.item_features
    assert torch.equal(features[:N_OLD], old)
    parent_mean, parent_std = raw[:N_OLD].mean(axis=0), raw[:N_OLD].std(axis=0, ddof=1)
    np.testing.assert_allclose(
        features[N_OLD:], (raw[N_OLD:] - parent_mean) / parent_std, rtol=1e-5
    )
    assert updated.model.feature_net.id_gates.weight.shape[0] == N_OLD + 4


# --- on churned synthetic data: parent on days 0-2, the update on day 3 ---


@pytest.fixture(scope="module")
def churned(tmp_path_factory):
    from training.data.synthetic import DAY, START_TIME, generate

    churn = Churn(new_items_per_day=60)
    events = generate(300, 2400, 10, days=4.0, seed=1, churn=churn).events
    day = (events.groupby("SessionId").Time.transform("min") - START_TIME) // DAY
    old, new = preprocess(events[day < 3]), events[day == 3].reset_index(drop=True)
    vocab = ItemVocab.from_events(old)
    cfg = Config(**{**TINY, "layers": (24,), "batch_size": 32, "n_sample": 64, "n_epochs": 2})
    model, history = fit(Sessions.from_events(old, vocab), len(vocab), cfg, False)
    root = tmp_path_factory.mktemp("churned")
    popularity = item_popularity(Sessions.from_events(old, vocab), len(vocab))
    save_model(root / "parent", model, cfg, vocab, popularity, {}, history.optimizer_state)
    write_events(new, root / "day3.tsv")
    return root, new


def test_the_updated_model_learns_the_new_items(churned):
    root, new = churned
    untrained = _zero_epochs(root / "parent", new)
    trained = update(root / "parent", new, ["n_epochs=2"])
    assert all(np.isfinite(e["loss"]) for e in trained.meta["epochs"])
    assert trained.meta["update"]["new_items"] > 10
    test = Sessions.from_events(new, trained.vocab, "drop")
    is_new = np.arange(len(trained.vocab)) >= len(load_model(root / "parent").vocab)
    before = evaluate_by_target(untrained.model, test, is_new)
    after = evaluate_by_target(trained.model, test, is_new)
    assert after["new"]["n_events"] > 100
    assert after["new"]["recall@20"] > before["new"]["recall@20"] + 0.2
    assert after["all"]["recall@20"] > before["all"]["recall@20"]


def test_an_updated_model_exports_and_serves_the_new_items(churned, tmp_path):
    root, new = churned
    updated = update(root / "parent", new, ["n_epochs=1"])
    save_update(tmp_path / "u", updated)
    exported = ExportedModel.load(export_model(tmp_path / "u", tmp_path / "export"), device="cpu")
    assert exported.item_ids == updated.vocab.ids.tolist()
    added = set(updated.vocab.ids[len(load_model(root / "parent").vocab) :])
    assert added and added <= set(new.ItemId)
    assert exported.n_items == len(updated.vocab)
