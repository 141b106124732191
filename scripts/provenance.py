"""Where a benchmark's figures came from, written beside them in docs/results/NAME.json:
the command line, the date, the commit, the machine and the library versions.

    from provenance import write_results      # scripts/ is on sys.path when a script runs
    write_results("baselines", {"rows": [...]})   # -> docs/results/baselines.json

`scripts/render_results.py` renders the README's tables from these files; it reads only the
keys below and each benchmark's own payload, so a new benchmark needs no change here.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
# distribution names tried in order: the CPU and the GPU build of onnxruntime are both "onnxruntime"
PACKAGES = {
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi; empty when there is none (or no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def machine() -> dict[str, Any]:
    """CPU model, the cores this process may use (affinity mask), memory and GPUs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": cores,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
    }


def versions() -> dict[str, str | None]:
    """Python and the libraries whose speed or numbers the figures depend on (None: absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in PACKAGES.items():
        found[name] = None
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, with the script's path relative to the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    if script.is_relative_to(ROOT):
        argv[0] = str(script.relative_to(ROOT))
    return shlex.join(["python", *argv])


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _commit() -> dict[str, Any]:
    """HEAD, the tracked files that differ from it and the untracked ones: the code that ran."""
    changed = _git("diff", "--name-only", "HEAD") or ""
    new = _git("ls-files", "--others", "--exclude-standard") or ""
    return {"head": _git("rev-parse", "HEAD"), "modified": changed.split(), "new": new.split()}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists; anything else as its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def record(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` under the provenance keys of this process."""
    return {
        "benchmark": name,
        "command": command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": _commit(),
        "machine": machine(),
        "versions": versions(),
        **payload,
    }


def write_results(
    name: str, payload: dict[str, Any], key: dict[str, Any] | None = None, out_dir: Path = RESULTS
) -> Path:
    """docs/results/NAME.json: `payload` under the provenance keys; returns the path.

    With `key`, the file is {"benchmark": NAME, "runs": [...]} and this run replaces the run
    with the same key (one table row per run, each with its own command and date)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    data = record(name, payload)
    if key is not None:
        old = json.loads(path.read_text()).get("runs", []) if path.exists() else []
        runs = [run for run in old if run.get("key") != key]
        data = {"benchmark": name, "runs": [*runs, {"key": key, **data}]}
    path.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path
