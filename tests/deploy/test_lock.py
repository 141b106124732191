"""uv.lock pins every dependency, and the serving image installs the locked versions."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"  # scripts/setup installs the pinned uv in the venv


def _uv_export(group: str) -> str:
    if not UV.exists():
        pytest.fail(f"{UV} is missing; scripts/setup installs it")
    out = subprocess.run(
        [str(UV), "export", "--quiet", "--frozen", "--no-emit-project", "--no-hashes",
         "--no-header", "--no-annotate", "--extra", group, "--format", "requirements-txt"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


@pytest.mark.parametrize("group", ["serve", "serve-cpu"])
def test_the_image_constraints_are_the_locked_versions(group):
    committed = (ROOT / "constraints" / f"{group}.txt").read_text()
    assert committed == _uv_export(group), f"constraints/{group}.txt is stale: run scripts/lock"


def test_the_lock_pins_one_version_of_every_package_for_this_python():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    exported = _uv_export("dev").splitlines()
    pins = [ln for ln in exported if ln and not ln.startswith((" ", "#"))]
    assert pins and all(re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?==\S+", p) for p in pins)
    names = {p["name"] for p in lock["package"]}
    for wanted in ("numpy", "pandas", "torch", "onnxruntime-gpu", "grpcio", "protobuf"):
        assert wanted in names
