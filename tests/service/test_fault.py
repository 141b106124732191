"""scripts/fault_run.py, small: two real service processes under load, one SIGKILLed; every
call that failed on it must have been answered by the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_killing_one_of_two_services_under_load_loses_no_call():
    run = subprocess.run(
        [sys.executable, "scripts/fault_run.py", "--items", "2000", "--load-s", "6",
         "--kill-after-s", "3", "--concurrency", "8", "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["killed_exit_status"] == -9 and report["survivor_alive"]
    assert (report["lost"], report["errors"]) == (0, {})
    assert report["retried"] > 0
    # the load went on after the kill: the survivor answered in every later second
    after = [w for w in report["timeline"] if w["t_s"] > report["kill_at_s"]]
    assert after and all(w["ok"] > 0 and w["failed"] == 0 for w in after)
