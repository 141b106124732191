"""The Dockerfile: hadolint-clean, and consistent with the service and the manifests."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import fields
from pathlib import Path

from service.config import ServiceConfig
from tests.tools import require_module

# PyYAML: a dev extra (kubernetes-validate brings it too)
yaml = require_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    stage, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else ""
        out.append((stage, word.upper(), rest.strip()))
    return out


def _in_stage(stage: str, instruction: str) -> list[str]:
    return [args for s, ins, args in _instructions() if s == stage and ins == instruction]


def test_hadolint_passes(tool):
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_build_argument_with_a_public_default():
    first = DOCKERFILE.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE[:first], re.M)
    assert _in_stage("runtime", "FROM") == ["${BASE_IMAGE} AS runtime"]


def test_cpu_and_gpu_targets_run_as_the_non_root_user_of_the_manifests():
    deployment = yaml.safe_load((ROOT / "k8s/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    for target in ("cpu", "gpu"):
        (user,) = _in_stage(target, "USER")
        assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}" and pod["runAsUser"] != 0


def test_cpu_is_the_default_target_and_gpu_gets_onnxruntime_gpu_with_cuda():
    stages = [args.split(" AS ")[-1] for _, ins, args in _instructions() if ins == "FROM"]
    assert stages[-1] == "cpu"
    assert "--from=deps-gpu /opt/venv /opt/venv" in _in_stage("gpu", "COPY")
    assert "--from=deps-cpu /opt/venv /opt/venv" in _in_stage("cpu", "COPY")
    (gpu_install,) = _in_stage("deps-gpu", "RUN")
    assert (
        "pyproject.toml serve " in gpu_install
        and "onnxruntime-gpu=${ORT_GPU_EXTRAS}" in gpu_install
    )
    assert "ARG ORT_GPU_EXTRAS=cuda,cudnn" in DOCKERFILE


def test_entrypoint_and_healthcheck_are_exec_form_python_modules():
    (entrypoint,) = _in_stage("runtime", "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "service"]  # exec form: SIGTERM reaches it
    (check,) = _in_stage("runtime", "HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[:3] == ["python", "-m", "service.tools.healthcheck"]


def test_image_environment_matches_the_service_defaults():
    env = " ".join(_in_stage("runtime", "ENV"))
    values = dict(re.findall(r"(RECSYS_\w+)=(\S+)", env))
    defaults = {f.name: f.default for f in fields(ServiceConfig)}
    assert values["RECSYS_HOST"] == defaults["host"]
    assert int(values["RECSYS_PORT"]) == defaults["port"]
    assert int(values["RECSYS_METRICS_PORT"]) == defaults["metrics_port"]
    assert values["RECSYS_DEVICE"] == defaults["device"]
    assert float(values["RECSYS_GRACE_S"]) == defaults["grace_s"]
    assert float(values["RECSYS_DRAIN_S"]) == defaults["drain_s"]
    exposed = {int(p) for args in _in_stage("runtime", "EXPOSE") for p in args.split()}
    assert exposed == {defaults["port"], defaults["metrics_port"]}


def test_model_is_optional_and_lands_where_the_image_looks_for_it():
    assert "FROM scratch AS model" in DOCKERFILE  # empty unless --build-context model=DIR
    env = " ".join(_in_stage("runtime", "ENV"))
    model_dir = re.search(r"RECSYS_MODEL_DIR=(\S+)", env).group(1)
    for target in ("cpu", "gpu"):
        assert f"--from=model / {model_dir}/" in _in_stage(target, "COPY")


def test_dependencies_are_installed_before_the_source_is_copied():
    order = [(s, ins, args) for s, ins, args in _instructions() if s == "cpu"]
    venv = order.index(("cpu", "COPY", "--from=deps-cpu /opt/venv /opt/venv"))
    source = order.index(("cpu", "COPY", "service /app/service"))
    assert venv < source


def test_build_context_holds_no_training_code_or_local_artefacts():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"  # allow-list: only what is named below enters the context
    allowed = {ln[1:].rstrip("/") for ln in rules if ln.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "scripts/container-requirements.py",
        "constraints",
        "service",
    }
