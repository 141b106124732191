"""scripts/container-requirements.py: the dependency list the image installs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container-requirements.py"


def _module():
    spec = importlib.util.spec_from_file_location("container_requirements", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOY = {
    "project": {
        "name": "Toy_Pkg",
        "dependencies": ["numpy>=1"],
        "optional-dependencies": {
            "base": ["grpcio>=1.7", "numpy>=1"],
            "cpu": ["toy-pkg[base]", "onnxruntime==1.0"],
            "all": ["toy.pkg[cpu, base]", "torch"],
        },
    }
}


def test_flatten_follows_self_references_and_drops_duplicates():
    reqs = _module().flatten(TOY, "all")
    assert reqs == ["numpy>=1", "grpcio>=1.7", "onnxruntime==1.0", "torch"]


def test_flatten_names_the_known_groups_when_one_is_missing():
    with pytest.raises(KeyError, match="'gpu'.*all, base, cpu"):
        _module().flatten(TOY, "gpu")


def test_add_extras_keeps_the_version_specifier():
    reqs = _module().add_extras(["numpy>=1", "onnxruntime_gpu==1.31.1"], "onnxruntime-gpu", "cuda")
    assert reqs == ["numpy>=1", "onnxruntime_gpu[cuda]==1.31.1"]


def test_add_extras_refuses_a_package_that_is_not_required():
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        _module().add_extras(["numpy"], "onnxruntime-gpu", "cuda")


@pytest.mark.parametrize(
    "group, runtime", [("serve-cpu", "onnxruntime"), ("serve", "onnxruntime-gpu")]
)
def test_serving_groups_of_the_real_pyproject_hold_no_torch(group, runtime):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), group],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {_module()._REQ.match(r).group(1).lower() for r in out}
    assert runtime in names and "grpcio" in names
    assert not names & {"torch", "torchvision", "pandas"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(declared["dependencies"]) <= set(out)
