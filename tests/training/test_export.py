"""ONNX export: PyTorch parity, loadability in the pinned onnxruntime, dynamic batch, the
files beside the graph, and the prefix graph that feeds whole click prefixes in one run."""

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
from training import export as export_module
from training.config import Config
from training.data.logs import ItemVocab
from training.export import (
    MAX_IR_VERSION,
    PARITY_ATOL,
    PARITY_RTOL,
    check_parity,
    export_model,
)
from training.fit.train import load_model, save_model
from training.models.architectures import build_model

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
    assert report["prefix_graph"] and report["worst_prefix_state_error_vs_tolerance"] <= 1.0


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


# ---- prefix.onnx: a whole click prefix per session in one run ----

RAGGED = [[5, 0, 33, 5, 12, 39, 1], [], [17], [2, 2, 2, 8]]  # some empty, one repeating


def features_model(root: Path) -> dict:
    """Config of a p-RNN (parallel ID and feature subnets) with a features file in root."""
    root.mkdir(parents=True, exist_ok=True)
    features = np.random.default_rng(0).normal(size=(N_ITEMS, 5)).astype(np.float32)
    np.save(root / "features.npy", features)
    path = str(root / "features.npy")
    return dict(architecture="parallel", layers=(6,), feature_layers=(4,), features=path)


PREFIX_VARIANTS = {
    **VARIANTS,
    "Bloom input": dict(layers=(8,), bloom_bits=0.5, bloom_hashes=2, bloom_on="input"),
    "Bloom both": dict(layers=(6, 4), bloom_bits=0.5, bloom_hashes=2, bloom_on="both"),
    "p-RNN parallel": features_model,
}


@torch.no_grad()
def pytorch_states(model_dir: Path, sequences: list[list[int]], state: np.ndarray) -> np.ndarray:
    """The reference: each row's clicks fed one by one through the PyTorch model."""
    model = load_model(model_dir, device="cpu").model.eval()
    sizes = [int(h.shape[1]) for h in model.init_hidden(1, "cpu")]
    rows = []
    for clicks, row in zip(sequences, state, strict=True):
        hidden = list(torch.from_numpy(row[None].copy()).split(sizes, dim=1))
        for item in clicks:
            _, hidden = model(torch.tensor([item]), hidden, None)
        rows.append(torch.cat(hidden, dim=1)[0].numpy())
    return np.stack(rows)


def as_arrays(sequences: list[list[int]]) -> list[np.ndarray]:
    return [np.array(s, dtype=np.int64) for s in sequences]


@pytest.mark.parametrize("config", PREFIX_VARIANTS.values(), ids=PREFIX_VARIANTS.keys())
def test_advance_many_equals_pytorch_click_by_click_for_ragged_sessions(tmp_path, config):
    if callable(config):
        config = config(tmp_path / "features")
    model_dir = saved_model(tmp_path / "model", **config)
    model = ExportedModel.load(export_model(model_dir, tmp_path / "export"), "cpu")
    assert model.has_prefix_graph
    rng = np.random.default_rng(3)
    state = rng.standard_normal((len(RAGGED), model.state_size)).astype(np.float32)
    got = model.advance_many(as_arrays(RAGGED), state)
    expected = pytorch_states(model_dir, RAGGED, state)
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    assert np.array_equal(got[1], state[1])  # no clicks, same state
    for b in range(len(RAGGED)):  # batch 1 as well
        one = model.advance_many(as_arrays(RAGGED[b : b + 1]), state[b : b + 1])
        np.testing.assert_allclose(one[0], expected[b], rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_the_prefix_file_loads_in_onnxruntime_without_the_scoring_part(exported):
    _, export_dir = exported
    graph = onnx.load(export_dir / "prefix.onnx")
    assert graph.ir_version <= MAX_IR_VERSION
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(
        str(export_dir / "prefix.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["items", "mask", "state"]
    assert [o.name for o in session.get_outputs()] == ["new_state"]
    assert [n.op_type for n in graph.graph.node] == ["Unsqueeze", "Scan"]
    body = graph.graph.node[1].attribute[0].g
    assert "TopK" not in {n.op_type for n in body.node}
    assert "scores" not in {name for n in body.node for name in n.output}
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert meta["prefix_graph"] == "prefix.onnx" and "prefix_graph_skipped" not in meta


def test_the_prefix_graph_feeds_only_the_masked_in_clicks_in_time_order(exported):
    model_dir, export_dir = exported
    model = ExportedModel.load(export_dir, "cpu")
    session = ort.InferenceSession(
        str(export_dir / "prefix.onnx"), providers=["CPUExecutionProvider"]
    )
    items = np.array([[3, 9], [4, 1], [5, 2], [6, 7]], dtype=np.int64)  # (T=4, B=2)
    mask = np.array([[True, False], [False, True], [True, False], [True, True]])  # holes
    state = np.random.default_rng(0).standard_normal((2, model.state_size)).astype(np.float32)
    (got,) = session.run(["new_state"], {"items": items, "mask": mask, "state": state})
    expected = pytorch_states(model_dir, [[3, 5, 6], [1, 7]], state)
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_an_export_without_a_prefix_graph_says_why_and_drops_a_stale_file(
    tmp_path, exported, monkeypatch
):
    model_dir, export_dir = exported
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)  # holds a prefix.onnx from the earlier export

    def unsupported(step: onnx.ModelProto) -> onnx.ModelProto:
        raise export_module._Unsupported("the step graph has local functions or nested graphs")

    monkeypatch.setattr(export_module, "_prefix_graph", unsupported)
    export_model(model_dir, target)
    meta = json.loads((target / "metadata.json").read_text())
    assert not (target / "prefix.onnx").exists()
    assert meta["prefix_graph"] is None and "nested graphs" in meta["prefix_graph_skipped"]
    model = ExportedModel.load(target, "cpu")
    assert not model.has_prefix_graph
    state = model.zero_state(len(RAGGED))
    got = model.advance_many(as_arrays(RAGGED), state)
    expected = pytorch_states(model_dir, RAGGED, state)
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_export_format_names_are_the_ones_the_service_reads():
    import service.runtime as rt
    from training import export

    names = [
        "FORMAT_VERSION", "MODEL_FILE", "PREFIX_FILE", "ITEMS_FILE", "POPULARITY_FILE",
        "METADATA_FILE", "INPUT_ITEMS", "INPUT_STATE", "INPUT_K", "INPUT_MASK", "OUTPUT_SCORES",
        "OUTPUT_STATE", "OUTPUT_TOP_SCORES", "OUTPUT_TOP_ITEMS",
    ]  # fmt: skip
    assert {n: getattr(export, n) for n in names} == {n: getattr(rt, n) for n in names}


def test_parity_allows_rounding_that_grows_with_the_scores_but_not_a_perturbed_weight(tmp_path):
    """Scores in the thousands (an Adam-trained model's reach tens) round by more than 1e-5
    in float32 however right the export: the tolerance grows with the row's largest score.
    A 0.1% error in one item's output weights still fails."""
    torch.manual_seed(0)
    cfg = Config(layers=(64,), constrained_embedding=False)  # Wy: output weights only
    model = build_model(400, cfg).eval()
    with torch.no_grad():
        model.Wy.weight.mul_(3000)
    ids = ItemVocab([f"i{i}" for i in range(400)])
    save_model(tmp_path / "m", model, cfg, ids, np.ones(400, dtype=np.int64), None)
    export_dir = export_model(tmp_path / "m", tmp_path / "e")
    report = check_parity(tmp_path / "m", export_dir, n_sessions=32)
    assert report["ok"] and report["max_abs_score_diff"] > 2 * PARITY_ATOL, report

    graph = onnx.load(export_dir / "model.onnx")
    weights = next(t for t in graph.graph.initializer if tuple(t.dims) == (64, 400))
    values = onnx.numpy_helper.to_array(weights).copy()
    values[:, 7] *= 1.001
    weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
    shutil.copytree(export_dir, tmp_path / "perturbed")
    onnx.save(graph, tmp_path / "perturbed" / "model.onnx")
    report = check_parity(tmp_path / "m", tmp_path / "perturbed", n_sessions=32)
    assert not report["ok"] and report["worst_score_error_vs_tolerance"] > 10, report
