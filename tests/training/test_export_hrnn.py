"""HRNN export: user.onnx (the step between a user's sessions) against PyTorch's hand_over,
its record in metadata.json, and model.onnx unchanged in interface beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.runtime import ExportedModel, ModelLoadError
from training import export_user
from training.config import Config
from training.data.logs import ItemVocab
from training.export import PARITY_ATOL, PARITY_RTOL, check_parity, export_model
from training.fit.train import load_model, save_model
from training.models.architectures import build_model

N_ITEMS = 30
PROPAGATIONS = ("init", "all")


def saved_hrnn(root: Path, propagation: str = "init", seed: int = 0) -> Path:
    """A tiny HRNN with random weights (two session layers, so deeper layers are reset too)."""
    torch.manual_seed(seed)
    cfg = Config(architecture="hrnn", layers=(7, 5), user_layer=4, user_propagation=propagation)
    model = build_model(N_ITEMS, cfg).eval()
    ids = [f"i{i}" for i in range(N_ITEMS)]
    save_model(root, model, cfg, ItemVocab(ids), np.arange(N_ITEMS, dtype=np.int64), {})
    return root


@pytest.fixture(scope="module", params=PROPAGATIONS)
def exported(request, tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp(f"hrnn-{request.param}")
    model_dir = saved_hrnn(root / "model", request.param)
    model = load_model(model_dir).model.eval()  # as saved, as the export read it
    return model_dir, export_model(model_dir, root / "export"), model


def test_the_user_step_agrees_with_pytorch_hand_over_for_random_states(exported):
    _, export_dir, model = exported
    rng = np.random.default_rng(1)
    sizes = model.hidden_sizes()  # [7, 5, 4]
    user = rng.normal(size=(6, sizes[-1])).astype(np.float32)
    state = rng.normal(size=(6, sum(sizes))).astype(np.float32)
    graph = ort.InferenceSession(str(export_dir / "user.onnx"), providers=["CPUExecutionProvider"])
    got_user, got_start = graph.run(None, {"user_state": user, "state": state})
    with torch.no_grad():
        hidden = list(torch.split(torch.from_numpy(state), sizes, dim=1))
        hidden[-1] = torch.from_numpy(user)
        expected = model.hand_over(hidden, torch.ones(6, dtype=torch.bool), None)
    want_start = torch.cat(expected, dim=1).numpy()
    np.testing.assert_allclose(got_user, expected[-1].numpy(), rtol=PARITY_RTOL, atol=PARITY_ATOL)
    np.testing.assert_allclose(got_start, want_start, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    # the start state: layer 1 from the user state, deeper layers zero, the user block c
    assert np.all(got_start[:, 7:12] == 0)
    np.testing.assert_allclose(got_start[:, 12:], got_user, rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_the_state_inputs_own_user_block_is_ignored(exported):
    _, export_dir, _ = exported
    model = ExportedModel.load(export_dir, "cpu")
    rng = np.random.default_rng(2)
    user = rng.normal(size=(1, 4)).astype(np.float32)
    state = rng.normal(size=(1, 16)).astype(np.float32)
    other = state.copy()
    other[:, 12:] = 0.0
    pairs = zip(model.end_session(user, state), model.end_session(user, other), strict=True)
    for got, expected in pairs:
        np.testing.assert_array_equal(got, expected)


def test_a_session_continued_from_the_start_state_matches_pytorch(exported):
    """The whole path: session 1 from zero, hand over, session 2 from the user graph's state,
    in the service's runtime against PyTorch's HRNN."""
    _, export_dir, model = exported
    served = ExportedModel.load(export_dir, "cpu")
    first, second = [3, 17, 5], [9, 2]
    state = served.advance_many([np.array(first)], served.zero_state(1))
    user = state[:, -served.user_size :]
    _, start = served.end_session(user, state)
    got, _ = served.scores(
        np.array([second[-1]]), served.advance_many([np.array(second[:-1])], start)
    )
    with torch.no_grad():
        hidden = model.init_hidden(1)
        for item in first:
            _, hidden = model(torch.tensor([item]), hidden)
        hidden = model.hand_over(hidden, torch.tensor([True]), None)
        for item in second:
            expected, hidden = model(torch.tensor([item]), hidden)
    np.testing.assert_allclose(got, expected.numpy(), rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_metadata_records_the_user_graph_and_its_sha256(exported):
    _, export_dir, _ = exported
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert meta["user_graph"]["file"] == "user.onnx" and meta["user_graph"]["user_size"] == 4
    digest = hashlib.sha256((export_dir / "user.onnx").read_bytes()).hexdigest()
    assert meta["files"]["user.onnx"] == digest
    assert meta["state_size"] == 7 + 5 + 4


def test_the_session_graph_keeps_its_interface_and_parity(exported):
    model_dir, export_dir, _ = exported
    graph = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in graph.get_inputs()] == ["items", "state", "k"]
    assert [o.name for o in graph.get_outputs()] == [
        "scores", "new_state", "top_scores", "top_items",
    ]  # fmt: skip
    report = check_parity(model_dir, export_dir, n_sessions=8)
    assert report["ok"] and report["user_graph"], report
    assert report["worst_user_step_error_vs_tolerance"] <= 1.0


def test_a_user_graph_from_another_export_is_refused_at_load(exported, tmp_path):
    _, export_dir, _ = exported
    other = export_model(saved_hrnn(tmp_path / "other", seed=5), tmp_path / "oe")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in export_dir.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "user.onnx").write_bytes((other / "user.onnx").read_bytes())
    with pytest.raises(ModelLoadError, match="sha256"):
        ExportedModel.load(mixed, "cpu")
    report = check_parity(exported[0], mixed, n_sessions=4)  # other weights: caught here too
    assert not report["ok"] and report["worst_user_step_error_vs_tolerance"] > 1.0


def test_a_session_model_export_has_no_user_graph_and_drops_a_stale_one(tmp_path):
    torch.manual_seed(0)
    cfg = Config(layers=(6,))
    ids = [f"i{i}" for i in range(N_ITEMS)]
    popularity = np.arange(N_ITEMS, dtype=np.int64)
    save_model(tmp_path / "m", build_model(N_ITEMS, cfg).eval(), cfg, ItemVocab(ids), popularity)
    out = tmp_path / "export"
    out.mkdir()
    (out / "user.onnx").write_bytes(b"stale")
    export_model(tmp_path / "m", out)
    assert not (out / "user.onnx").exists()
    assert json.loads((out / "metadata.json").read_text())["user_graph"] is None
    assert not ExportedModel.load(out, "cpu").has_user_graph


def test_user_graph_names_are_the_ones_the_service_reads():
    import service.runtime as rt

    names = [
        "USER_FILE", "INPUT_USER_STATE", "INPUT_FINAL_STATE", "OUTPUT_USER_STATE",
        "OUTPUT_START_STATE",
    ]  # fmt: skip
    assert {n: getattr(export_user, n) for n in names} == {n: getattr(rt, n) for n in names}
