"""Loading an export directory: execution provider choice, torch-free imports, errors that
name the file at fault, and whole click prefixes in one run (advance_many)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.runtime import (
    CPU,
    ExportedModel,
    ModelLoadError,
    choose_providers,
    cuda_device_count,
)
from training.export import PARITY_ATOL, PARITY_RTOL

ROOT = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(cuda_device_count() > 0, reason="checks the CPU-only fallback")


def test_the_service_imports_neither_torch_nor_the_training_package():
    code = (
        "import sys, service.__main__, service.tools.client, service.tools.loadgen;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_cpu_is_used_when_asked_for():
    assert choose_providers("cpu") == [CPU]


@no_gpu
def test_without_a_cuda_device_auto_loads_on_cpu_without_error_output(tiny):
    assert choose_providers("auto") == [CPU]
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "from service.runtime import ExportedModel;"
        f"ExportedModel.load({str(tiny.export_dir)!r}, 'auto')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "on CPUExecutionProvider" in out.stderr
    lines = [line for line in out.stderr.splitlines() if "INFO" not in line]
    assert lines == []  # in particular no onnxruntime complaint about CUDA libraries


@no_gpu
def test_asking_for_cuda_without_a_device_says_what_to_use_instead(tiny):
    with pytest.raises(ModelLoadError, match="use --device auto or cpu"):
        ExportedModel.load(tiny.export_dir, "cuda")


def test_a_loaded_export_knows_its_items_popularity_and_version(tiny):
    model = ExportedModel.load(tiny.export_dir, "cpu")
    meta = json.loads((tiny.export_dir / "metadata.json").read_text())
    assert model.item_ids == tiny.item_ids
    assert np.array_equal(model.popularity, tiny.popularity)
    assert model.model_version == meta["model_version"]
    assert model.state_size == 8 + 6


def broken_copy(tiny, tmp_path: Path, name: str, content: bytes | None) -> Path:
    target = tmp_path / "export"
    shutil.copytree(tiny.export_dir, target)
    if content is None:
        (target / name).unlink()
    else:
        (target / name).write_bytes(content)
    return target


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("model.onnx", None, "model.onnx is missing"),
        ("model.onnx", b"not a model", "cannot load it"),
        ("prefix.onnx", b"not a model", "cannot load it"),
        ("items.txt", b"a\nb\n", "expected 60 distinct item ids"),
        ("metadata.json", b"{}", "unreadable or incomplete"),
        (
            "metadata.json",
            json.dumps(
                {"format_version": 99, "model_version": "v", "n_items": 60, "state_size": 14}
            ).encode(),
            "export format 99 is not 1",
        ),
    ],
)
def test_a_broken_export_is_refused_naming_the_file(tiny, tmp_path, name, content, message):
    target = broken_copy(tiny, tmp_path, name, content)
    with pytest.raises(ModelLoadError, match=message) as caught:
        ExportedModel.load(target, "cpu")
    assert name in str(caught.value)


def test_popularity_of_the_wrong_shape_is_refused(tiny, tmp_path):
    target = broken_copy(tiny, tmp_path, "popularity.npy", None)
    np.save(target / "popularity.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ModelLoadError, match=r"popularity.npy: expected \(60,\) integer"):
        ExportedModel.load(target, "cpu")


def step_by_step(
    model: ExportedModel, sequences: list[np.ndarray], state: np.ndarray
) -> np.ndarray:
    """The reference: each row's clicks through `advance`, one click per call."""
    rows = []
    for clicks, row in zip(sequences, state, strict=True):
        row = row[None]
        for item in clicks:
            row = model.advance(np.array([item], dtype=np.int64), row)
        rows.append(row[0])
    return np.stack(rows)


def ragged(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60, n) for n in lengths]


@pytest.mark.parametrize("lengths", [[29], [0], [1], [6, 0, 1, 13, 0], [0, 0]], ids=str)
def test_advance_many_equals_advancing_click_by_click(tiny, lengths):
    model = ExportedModel.load(tiny.export_dir, "cpu")
    assert model.has_prefix_graph
    sequences = ragged(lengths)
    state = np.random.default_rng(1).standard_normal((len(lengths), 14)).astype(np.float32)
    got = model.advance_many(sequences, state)
    assert got.shape == state.shape and got.dtype == np.float32
    expected = step_by_step(model, sequences, state)
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    for b, clicks in enumerate(sequences):
        if len(clicks) == 0:
            assert np.array_equal(got[b], state[b])


def test_without_a_prefix_file_advance_many_steps_and_gives_the_same_states(tiny, tmp_path):
    target = broken_copy(tiny, tmp_path, "prefix.onnx", None)  # an export from before it
    fallback = ExportedModel.load(target, "cpu")
    model = ExportedModel.load(tiny.export_dir, "cpu")
    assert not fallback.has_prefix_graph
    sequences = ragged([6, 0, 1, 13, 0], seed=2)
    state = np.random.default_rng(3).standard_normal((5, 14)).astype(np.float32)
    got = fallback.advance_many(sequences, state)
    np.testing.assert_allclose(
        got, model.advance_many(sequences, state), rtol=PARITY_RTOL, atol=PARITY_ATOL
    )
    expected = step_by_step(model, sequences, state)
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    assert np.array_equal(got[[1, 4]], state[[1, 4]])


def test_advance_many_leaves_the_callers_state_alone(tiny):
    model = ExportedModel.load(tiny.export_dir, "cpu")
    state = model.zero_state(2)
    assert model.advance_many([np.array([], np.int64)] * 2, state) is not state
    model.advance_many(ragged([3, 2]), state)
    assert not state.any()


def test_advance_many_refuses_a_state_with_another_number_of_rows(tiny):
    model = ExportedModel.load(tiny.export_dir, "cpu")
    with pytest.raises(ValueError, match=r"one row per sequence \(3\)"):
        model.advance_many(ragged([1, 2, 3]), model.zero_state(2))
