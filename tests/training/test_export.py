"""ONNX export: PyTorch parity, loadability in the pinned onnxruntime, dynamic batch, the
files beside the graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.runtime import ExportedModel
from training.config import Config
from training.data import ItemVocab
from training.export import MAX_IR_VERSION, check_parity, export_model
from training.model import build_model
from training.train import save_model

N_ITEMS = 40
ODD_IDS = ["plain", "with space", "tab\there", "form\x0cfeed", "ünï", "", "x\x1cy"]
VARIANTS = {
    "shared embedding, two layers": dict(layers=(8, 5)),
    "one-hot input": dict(layers=(6,), constrained_embedding=False, embedding=0),
    "separate embedding": dict(layers=(7, 4), constrained_embedding=False, embedding=9),
}


def saved_model(root: Path, seed: int = 0, meta: dict | None = None, **config) -> Path:
    torch.manual_seed(seed)
    cfg = Config(**config)
    ids = ODD_IDS + [f"i{i}" for i in range(N_ITEMS - len(ODD_IDS))]
    popularity = np.arange(N_ITEMS, dtype=np.int64) * 3
    save_model(root, build_model(N_ITEMS, cfg).eval(), cfg, ItemVocab(ids), popularity, meta)
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    meta = {"train_clicks": 123, "evaluation": {"recall@20": 0.25, "mrr@20": 0.1}}
    model_dir = saved_model(root / "model", meta=meta, layers=(8, 5))
    return model_dir, export_model(model_dir, root / "export")


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_onnxruntime_and_pytorch_agree_on_scores_and_top20(tmp_path, config):
    model_dir = saved_model(tmp_path / "model", **config)
    export_dir = export_model(model_dir, tmp_path / "export")
    report = check_parity(model_dir, export_dir, n_sessions=16, seed=1)
    assert report["ok"], report
    assert report["worst_score_error_vs_tolerance"] <= 1.0
    assert report["top20_mismatched_rows"] == report["graph_top20_mismatched_rows"] == 0


def test_parity_fails_for_an_export_of_other_weights(tmp_path, exported):
    model_dir, export_dir = exported
    other = export_model(saved_model(tmp_path / "other", seed=1, layers=(8, 5)), tmp_path / "oe")
    mixed = tmp_path / "mixed"
    shutil.copytree(export_dir, mixed)
    shutil.copy(other / "model.onnx", mixed / "model.onnx")
    report = check_parity(model_dir, mixed, n_sessions=8)
    assert not report["ok"]
    assert report["worst_score_error_vs_tolerance"] > 1.0


def test_the_file_loads_in_onnxruntime_with_a_supported_ir_version(exported):
    _, export_dir = exported
    graph = onnx.load(export_dir / "model.onnx")
    assert graph.ir_version <= MAX_IR_VERSION
    session = ort.InferenceSession(
        str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["items", "state", "k"]
    assert [o.name for o in session.get_outputs()] == [
        "scores",
        "new_state",
        "top_scores",
        "top_items",
    ]


def test_onnxruntime_refuses_the_newest_ir_version_which_is_why_export_lowers_it(exported):
    _, export_dir = exported
    graph = onnx.load(export_dir / "model.onnx")
    graph.ir_version = onnx.IR_VERSION
    if onnx.IR_VERSION <= 13:
        pytest.skip("this onnx writes an IR version onnxruntime 1.31.1 reads")
    with pytest.raises(Exception, match="(?i)ir.?version|Unsupported model"):
        ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_batch_size_is_dynamic_and_rows_do_not_interact(exported):
    _, export_dir = exported
    model = ExportedModel.load(export_dir, "cpu")
    rng = np.random.default_rng(0)
    items = rng.integers(0, N_ITEMS, 5)
    state = rng.standard_normal((5, model.state_size)).astype(np.float32)
    scores, new_state = model.scores(items, state)
    assert scores.shape == (5, N_ITEMS) and new_state.shape == (5, model.state_size)
    for row in range(5):
        one, one_state = model.scores(items[row : row + 1], state[row : row + 1])
        np.testing.assert_allclose(one[0], scores[row], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(one_state[0], new_state[row], rtol=1e-6, atol=1e-6)


def test_the_graph_top_k_breaks_ties_by_the_lower_item_index(tmp_path):
    model_dir = saved_model(tmp_path / "model", layers=(6,))
    payload = torch.load(model_dir / "model.pt", weights_only=True)
    for name in ("Wy.weight", "By.weight"):  # items 30 and 11 get identical output rows
        payload["state_dict"][name][30] = payload["state_dict"][name][11]
    torch.save(payload, model_dir / "model.pt")
    model = ExportedModel.load(export_model(model_dir, tmp_path / "export"), "cpu")
    scores, _ = model.scores(np.array([3]), model.zero_state(1))
    assert scores[0, 11] == scores[0, 30]
    top_scores, top_items, _ = model.top_k(np.array([3]), model.zero_state(1), N_ITEMS)
    order = list(top_items[0])
    assert order.index(11) == order.index(30) - 1
    assert np.all(np.diff(top_scores[0]) <= 0)


def test_vocabulary_popularity_and_metadata_are_written_beside_the_graph(exported):
    model_dir, export_dir = exported
    model = ExportedModel.load(export_dir, "cpu")
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert model.item_ids[: len(ODD_IDS)] == ODD_IDS  # odd ids survive one-a-line storage
    assert np.array_equal(np.load(export_dir / "popularity.npy"), np.arange(N_ITEMS) * 3)
    assert meta["format_version"] == 1 and meta["n_items"] == N_ITEMS
    assert meta["state_layers"] == [8, 5] and meta["state_size"] == 13
    assert meta["config"]["layers"] == [8, 5]
    assert meta["training"]["train_clicks"] == 123
    assert meta["evaluation"] == {"recall@20": 0.25, "mrr@20": 0.1}
    assert meta["model_version"].startswith("gru4rec-")
    assert meta["onnx"]["ir_version"] <= MAX_IR_VERSION


def test_an_item_id_with_a_line_break_is_refused(tmp_path):
    cfg = Config(layers=(4,))
    vocab = ItemVocab(["a", "b\nc"])
    save_model(tmp_path / "m", build_model(2, cfg), cfg, vocab, np.ones(2, dtype=np.int64), {})
    with pytest.raises(ValueError, match="line break"):
        export_model(tmp_path / "m", tmp_path / "e")
