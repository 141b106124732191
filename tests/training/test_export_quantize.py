"""The int8 output layer (`export --quantize int8`): it loads in the pinned onnxruntime and in
the service, its scores stay within the rounding bound of the float32 export's, its top
items mostly agree, and metadata.json says what was quantised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from service.runtime import ExportedModel
from training.__main__ import main as training_main
from training.export import MAX_IR_VERSION, _inconsistent_rows, check_parity, export_model
from training.export_quantize import INT8_MAX, STATE_SCALE, quantize_columns

from .test_export import N_ITEMS, VARIANTS, saved_model

LAYERS = (8, 5)
ROWS = 64


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model dir, fp32 export, int8 export) of one small two-layer model."""
    root = tmp_path_factory.mktemp("quantize")
    model_dir = saved_model(root / "model", layers=LAYERS)
    fp32 = export_model(model_dir, root / "fp32")
    int8 = export_model(model_dir, root / "int8", quantize="int8")
    return model_dir, fp32, int8


def random_steps(model: ExportedModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ROWS clicks and GRU-like states (tanh keeps them in (-1, 1) as the GRU's are)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, N_ITEMS, ROWS)
    state = np.tanh(rng.standard_normal((ROWS, model.state_size))).astype(np.float32)
    return items, state


def test_the_int8_graph_loads_in_onnxruntime_and_uses_integer_arithmetic(exports):
    _, _, int8 = exports
    graph = onnx.load(int8 / "model.onnx")
    assert graph.ir_version <= MAX_IR_VERSION
    ops = [n.op_type for n in graph.graph.node]
    assert "MatMulIntegerToFloat" in ops and "QuantizeLinear" in ops
    # each GRU layer's two Gemms stay; the output layer's Gemm is gone
    assert ops.count("Gemm") == 2 * len(LAYERS)
    weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert [list(t.dims) for t in weights] == [[LAYERS[-1], N_ITEMS]]
    ort.InferenceSession(str(int8 / "model.onnx"), providers=["CPUExecutionProvider"])


def test_metadata_records_the_quantisation_and_the_version_names_it(exports):
    _, fp32, int8 = exports
    meta = json.loads((int8 / "metadata.json").read_text())
    assert meta["quantization"]["output_layer"] == "int8"
    assert meta["model_version"].startswith("gru4rec-int8-")
    plain = json.loads((fp32 / "metadata.json").read_text())
    assert plain["quantization"] is None and not plain["model_version"].startswith("gru4rec-int8")


def test_int8_scores_stay_within_the_rounding_bound_and_states_are_unchanged(exports):
    """Per item j, with x the last layer's state, w the item's weights and their int8 steps
    s_w = max|w| / 127 (weights, rounded: error <= s_w / 2) and s_x = 2 / 255
    (activations: error <= s_x / 2, up to s_x where x = 1 saturates at 255):
        |score - score_int8| <= s_w / 2 * sum|x| + s_x * sum(|w| + s_w / 2)."""
    model_dir, fp32, int8 = exports
    exact, cheap = ExportedModel.load(fp32, "cpu"), ExportedModel.load(int8, "cpu")
    items, state = random_steps(exact)
    scores, new_state = exact.scores(items, state)
    scores_int8, new_state_int8 = cheap.scores(items, state)
    np.testing.assert_allclose(new_state_int8, new_state, rtol=1e-6, atol=1e-6)
    weight = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]["Wy.weight"]
    w = weight.numpy().T  # (S_last, N)
    _, s_w = quantize_columns(w)
    x = new_state[:, -LAYERS[-1] :]  # the last layer feeds the output layer
    s_x = STATE_SCALE
    bound = s_w / 2 * np.abs(x).sum(axis=1, keepdims=True)
    bound = bound + s_x * (np.abs(w) + s_w / 2).sum(axis=0)
    error = np.abs(scores_int8 - scores)
    assert np.all(error <= bound + 1e-6), float((error - bound).max())
    assert error.max() > 0  # it did run in int8


def test_a_rows_int8_scores_do_not_depend_on_the_rows_beside_it(exports):
    # one fixed activation scale, not one per run: batching changes nothing
    _, _, int8 = exports
    model = ExportedModel.load(int8, "cpu")
    items, state = random_steps(model)
    scores, _ = model.scores(items, state)
    for row in (0, 17, ROWS - 1):
        alone, _ = model.scores(items[row : row + 1], state[row : row + 1])
        np.testing.assert_array_equal(alone[0], scores[row])


def test_the_int8_top_items_mostly_agree_with_float32(exports):
    _, fp32, int8 = exports
    exact, cheap = ExportedModel.load(fp32, "cpu"), ExportedModel.load(int8, "cpu")
    items, state = random_steps(exact, seed=1)
    _, top, _ = exact.top_k(items, state, 10)
    _, top_int8, _ = cheap.top_k(items, state, 10)
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top, top_int8, strict=True)]
    # 40 items with 5 units score close together, so neighbours swap; most stay
    assert np.mean(overlap) >= 0.9
    assert np.mean(top[:, 0] == top_int8[:, 0]) >= 0.8


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_only_the_output_layer_is_quantised_whatever_the_input(tmp_path, config):
    # with a one-hot input the GRU's input product (N, 3H) outweighs the output layer's
    model_dir = saved_model(tmp_path / "model", **config)
    exact = ExportedModel.load(export_model(model_dir, tmp_path / "fp32"), "cpu")
    cheap = ExportedModel.load(export_model(model_dir, tmp_path / "int8", quantize="int8"), "cpu")
    items, state = random_steps(exact)
    scores, new_state = exact.scores(items, state)
    scores_int8, new_state_int8 = cheap.scores(items, state)
    np.testing.assert_allclose(new_state_int8, new_state, rtol=1e-6, atol=1e-6)
    assert 0 < np.abs(scores_int8 - scores).max() < 0.05 * np.abs(scores).max()


def test_the_service_runtime_serves_the_int8_export(exports):
    _, fp32, int8 = exports
    model = ExportedModel.load(int8, "cpu")
    assert model.model_version.startswith("gru4rec-int8-")
    assert model.has_prefix_graph  # prefix.onnx computes no scores: float32 as ever
    top_scores, top_items, state, scores = model.step(
        np.array([3, 7]), model.zero_state(2), 5, with_scores=True
    )
    assert top_items.shape == (2, 5) and state.shape == (2, model.state_size)
    assert np.all(np.diff(top_scores, axis=1) <= 0)
    assert scores is not None
    np.testing.assert_array_equal(np.take_along_axis(scores, top_items, 1), top_scores)
    prefix = ExportedModel.load(fp32, "cpu").advance_many(
        [np.array([1, 2, 3])], model.zero_state(1)
    )
    np.testing.assert_array_equal(
        model.advance_many([np.array([1, 2, 3])], model.zero_state(1)), prefix
    )


def test_quantize_columns_rounds_each_column_to_its_own_scale():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4)).astype(np.float32) * np.array([1e-3, 1.0, 50.0, 0.0])
    q, scale = quantize_columns(weight)
    assert q.dtype == np.int8 and scale.shape == (4,)
    assert np.all(np.abs(q[:, :3]).max(axis=0) == INT8_MAX)  # each column uses its full range
    assert np.all(np.abs(q * scale - weight) <= scale / 2 + 1e-9)
    assert scale[3] == 1.0 and not q[:, 3].any()  # an all-zero column stays zero


def test_the_cli_flag_exports_int8_and_an_unknown_kind_is_refused(exports, tmp_path):
    model_dir, _, _ = exports
    training_main(["export", "--model", str(model_dir), "--out", str(tmp_path / "e"),
                   "--quantize", "int8"])  # fmt: skip
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    assert meta["quantization"]["output_layer"] == "int8"
    with pytest.raises(ValueError, match="unknown quantize 'int4'"):
        export_model(model_dir, tmp_path / "x", quantize="int4")


def test_parity_holds_an_int8_export_to_its_error_bound(exports, tmp_path):
    model_dir, _, int8 = exports
    report = check_parity(model_dir, int8, n_sessions=16)
    assert report["ok"] and report["max_abs_score_diff"] > 0
    assert 0 < report["worst_score_error_vs_tolerance"] <= 1.0
    assert report["score_tolerance"].endswith("the int8 output layer's error bound per score")
    # item scales 1.5 times too large: scores off by a third of their size, past the bound
    tampered = tmp_path / "tampered"
    shutil.copytree(int8, tampered)
    graph = onnx.load(tampered / "model.onnx")
    scale = next(t for t in graph.graph.initializer if t.name.endswith("w_scale"))
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 1.5, scale.name))
    onnx.save(graph, tampered / "model.onnx")
    report = check_parity(model_dir, tampered, n_sessions=16)
    assert not report["ok"] and report["worst_score_error_vs_tolerance"] > 1.0


def test_an_int8_top_list_may_swap_only_items_within_their_bounds():
    scores = np.array([[3.0, 2.9, 1.0, 0.0]] * 3)
    tolerance = np.full_like(scores, 0.06)  # 3.0 and 2.9 overlap, nothing else does
    got = np.array([[1, 0], [0, 1], [2, 0]])  # a swap within bounds, exact, 1.0 above 2.9
    assert _inconsistent_rows(scores, got, tolerance) == 1
    one, within = scores[:1], tolerance[:1]
    assert _inconsistent_rows(one, np.array([[1]]), within) == 0  # 2.94 <= 2.96
    assert _inconsistent_rows(one, np.array([[3, 2]]), within) == 1  # 0.0 first
