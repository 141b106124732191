"""`export --quantize auto` (the default): int8 where the catalogue is large enough and the
int8 graph ranks the check clicks within 0.5% of float32, float32 otherwise, the choice and
its figures recorded and printed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper

from training import quantize_check
from training.__main__ import main as training_main
from training.config import Config
from training.data.logs import DataError, ItemVocab, item_popularity
from training.export import GraphScorer, check_parity, export_model
from training.fit.train import fit, save_model
from training.quantize_check import choose_output_layer

from ..conftest import markov_sessions
from .test_export import PREFIX_VARIANTS, saved_model

N_ITEMS = 300


def write_clicks(path: Path, seed: int) -> Path:
    """Markov sessions over items i0..i299 as a click log."""
    sessions = markov_sessions(N_ITEMS, 300, seed=seed)
    lengths = np.diff(sessions.offsets)
    pd.DataFrame({
        "SessionId": np.repeat(sessions.session_ids, lengths),
        "ItemId": [f"i{i}" for i in sessions.items],
        "Time": np.arange(sessions.n_events, dtype=np.float64),
    }).to_csv(path, sep="\t", index=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A GRU4Rec trained on markov sessions; it records its training clicks' file."""
    root = tmp_path_factory.mktemp("auto")
    train = markov_sessions(N_ITEMS, 800, seed=3)
    cfg = Config(layers=(32,), loss="cross-entropy", n_epochs=3, batch_size=32)
    model, _ = fit(train, N_ITEMS, cfg, progress=False)
    clicks = write_clicks(root / "clicks.tsv", seed=4)
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    popularity = item_popularity(train, N_ITEMS)
    save_model(root / "model", model, cfg, vocab, popularity, {"train_file": str(clicks)})
    return root / "model"


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(quantize_check, "AUTO_MIN_ITEMS", 100)


def test_below_the_threshold_auto_keeps_float32_without_a_check(trained, tmp_path):
    out = export_model(trained, tmp_path / "e", quantize="auto")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quantization"] is None
    choice = meta["output_layer_choice"]
    assert choice["output_layer"] == "float32" and choice["check"] is None
    assert choice["why"] == "300 items: int8 pays from 5,000"


def test_auto_keeps_int8_when_it_ranks_the_training_clicks_as_well(
    trained, tmp_path, small_threshold
):
    out = export_model(trained, tmp_path / "e", quantize="auto")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quantization"]["output_layer"] == "int8"
    assert meta["model_version"].startswith("gru4rec-int8-")
    check = meta["output_layer_choice"]["check"]
    assert check["clicks"].endswith("clicks.tsv") and check["within"]
    assert check["sessions"] == 300 and check["targets"] > 1000
    assert check["float32"]["recall@20"] > 0.3  # a trained model, not noise
    assert all(d >= -quantize_check.TOLERANCE for d in check["relative_diff"].values())


def test_auto_refuses_an_int8_graph_that_ranks_worse(trained, tmp_path, small_threshold):
    fp32 = onnx.load(export_model(trained, tmp_path / "f", quantize=None) / "model.onnx")
    int8 = onnx.load(export_model(trained, tmp_path / "q", quantize="int8") / "model.onnx")
    scale = next(t for t in int8.graph.initializer if t.name.endswith("w_scale"))
    values = numpy_helper.to_array(scale).copy()
    np.random.default_rng(0).shuffle(values)  # every item scored on another's scale
    scale.CopyFrom(numpy_helper.from_array(values, scale.name))
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    clicks = write_clicks(tmp_path / "check.tsv", seed=5)
    choice = choose_output_layer(fp32, int8, N_ITEMS, clicks, vocab, GraphScorer)
    assert not choice.int8
    assert "more than 0.5% below; --quantize int8 forces it" in choice.why
    assert choice.check["int8"]["mrr@20"] < choice.check["float32"]["mrr@20"]
    # the same graphs unharmed pass on the same clicks
    good = onnx.load(tmp_path / "q" / "model.onnx")
    assert choose_output_layer(fp32, good, N_ITEMS, clicks, vocab, GraphScorer).int8


def test_without_clicks_to_check_auto_keeps_float32_and_says_how_to_check(
    tmp_path, capsys, small_threshold, monkeypatch
):
    monkeypatch.setattr(quantize_check, "AUTO_MIN_ITEMS", 10)
    model = saved_model(tmp_path / "m", layers=(8,))  # records no training file
    training_main(["export", "--model", str(model), "--out", str(tmp_path / "e"), "--quiet"])
    printed = capsys.readouterr().out
    assert "output layer float32 (no clicks to check int8 on" in printed
    assert "--check-clicks FILE" in printed
    # the training file it records, gone: float32, saying so
    payload = torch.load(model / "model.pt", weights_only=True)
    payload["meta"]["train_file"] = str(tmp_path / "gone.tsv")
    torch.save(payload, model / "model.pt")
    training_main(["export", "--model", str(model), "--out", str(tmp_path / "e2"), "--quiet"])
    printed = capsys.readouterr().out
    assert f"the model's training file {tmp_path / 'gone.tsv'} is not a file here" in printed
    # a --check-clicks file that is not there is an error
    with pytest.raises(SystemExit) as stop:
        training_main(["export", "--model", str(model), "--out", str(tmp_path / "e3"),
                       "--check-clicks", str(tmp_path / "typo.tsv")])  # fmt: skip
    assert stop.value.code == 2
    assert f"{tmp_path / 'typo.tsv'}: no such file" in capsys.readouterr().err


def test_the_cli_default_is_auto_and_check_clicks_chooses_the_file(
    trained, tmp_path, capsys, small_threshold
):
    clicks = write_clicks(tmp_path / "held_out.tsv", seed=6)
    training_main(["export", "--model", str(trained), "--out", str(tmp_path / "e"), "--quiet",
                   "--check-clicks", str(clicks)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "output layer int8 (300 items; Recall@20" in printed
    assert f"of the last 300 sessions of {clicks})" in printed
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    assert meta["output_layer_choice"]["check"]["clicks"] == str(clicks)
    training_main(["export", "--model", str(trained), "--out", str(tmp_path / "n"),
                   "--quantize", "none"])  # fmt: skip
    assert capsys.readouterr().out.strip().endswith("output layer float32")


@pytest.mark.parametrize("config", PREFIX_VARIANTS.values(), ids=PREFIX_VARIANTS.keys())
def test_auto_exports_every_architecture_and_what_it_writes_passes_parity(
    tmp_path, config, monkeypatch
):
    monkeypatch.setattr(quantize_check, "AUTO_MIN_ITEMS", 10)
    config = config(tmp_path / "features") if callable(config) else config
    model = saved_model(tmp_path / "m", **config)
    clicks = tmp_path / "clicks.tsv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"SessionId": np.repeat(np.arange(60), 4),
                  "ItemId": [f"i{i}" for i in rng.integers(0, 30, 240)],
                  "Time": np.arange(240.0)}).to_csv(clicks, sep="\t", index=False)  # fmt: skip
    out = export_model(model, tmp_path / "e", quantize="auto", check_clicks=clicks)
    meta = json.loads((out / "metadata.json").read_text())
    choice = meta["output_layer_choice"]
    assert choice["output_layer"] == ("float32" if meta["quantization"] is None else "int8")
    if config.get("bloom_on") == "both":  # scores decoded from bits: nothing per item
        assert choice["output_layer"] == "float32" and "Bloom" in choice["why"]
    else:
        assert choice["check"]["targets"] == 180
    assert check_parity(model, out, n_sessions=8)["ok"]


def test_the_training_files_own_column_names_are_given_for_its_check(
    trained, tmp_path, capsys, small_threshold
):
    """A model trained on a log with other column names: auto cannot read it as the check's
    default and keeps float32, saying so; naming the columns checks on it."""
    renamed = tmp_path / "renamed.tsv"
    clicks = pd.read_csv(trained.parent / "clicks.tsv", sep="\t")
    clicks.rename(columns={"SessionId": "sid", "ItemId": "iid", "Time": "ts"}).to_csv(
        renamed, sep="\t", index=False
    )
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    payload = torch.load(model / "model.pt", weights_only=True)
    payload["meta"]["train_file"] = str(renamed)
    torch.save(payload, model / "model.pt")
    training_main(["export", "--model", str(model), "--out", str(tmp_path / "e"), "--quiet"])
    printed = capsys.readouterr().out
    assert "output layer float32 (the model's training file could not be read" in printed
    assert "missing column(s) SessionId, ItemId, Time" in printed
    training_main(["export", "--model", str(model), "--out", str(tmp_path / "e"), "--quiet",
                   "--check-clicks", str(renamed), "--session-key", "sid", "--item-key", "iid",
                   "--time-key", "ts"])  # fmt: skip
    assert "output layer int8 (300 items;" in capsys.readouterr().out
    with pytest.raises(DataError, match="missing column"):  # asked for, so it must be read
        export_model(model, tmp_path / "x", quantize="auto", check_clicks=renamed)
