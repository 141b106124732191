"""Loading an export directory: execution provider choice, torch-free imports, and errors
that name the file at fault."""

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

ROOT = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(cuda_device_count() > 0, reason="checks the CPU-only fallback")


def test_the_service_imports_neither_torch_nor_the_training_package():
    code = (
        "import sys, service.__main__, service.client, service.loadgen;"
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
