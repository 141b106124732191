"""Shared helpers of the deployment tests: where the repository and the external tools are.

External tools (hadolint, kubectl, kubernetes-validate, podman) are skipped with a reason when
missing, except when DEPLOY_REQUIRE_TOOLS=1 (scripts/ci-deploy.sh sets it): then a missing
tool fails the test, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def find_tool(name: str) -> str:
    """Absolute path of executable `name` (PATH, then beside this Python); skip/fail if absent."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    reason = f"{name} is not installed (scripts/ci-deploy.sh sets up what tests/deploy needs)"
    if os.environ.get("DEPLOY_REQUIRE_TOOLS") == "1":
        pytest.fail(reason + "; DEPLOY_REQUIRE_TOOLS=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """`tool("hadolint")` -> path of the executable, or skip (fail under DEPLOY_REQUIRE_TOOLS=1)."""
    return find_tool
