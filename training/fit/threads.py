"""How many CPU threads training may use: the cgroup CPU quota and the affinity mask, not
the host's core count.

torch starts one intra-op thread per core of the machine. In a pod limited to 2 CPUs on a
64-core node that is 64 threads sharing 2 CPUs' worth of time; on a shared 2-core machine
with two other busy processes, 2 threads that wait for each other at every operation fell
from about 7,000 to 137 events/s. So the default is what the process may really use:

    usable_cpus()    # min(affinity mask, ceil(cgroup quota / period)), cgroup v2 or v1
    default_threads(usable_cpus())

and OpenMP's worker threads sleep instead of spinning when they wait (OMP_WAIT_POLICY),
unless the user set it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), or None when unlimited or
    unknown. Reads cgroup v2 `cpu.max` ("max 100000" or "150000 100000") or v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = unlimited)."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return _ratio(quota, period or "100000")
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            return _ratio(quota_file.read_text().strip(), period_file.read_text().strip())
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can run on (affinity mask), capped by the cgroup quota rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def default_threads(cpus: int) -> int:
    """Intra-op threads for a training step on `cpus` usable CPUs.

    A step's matrices are small (32 x 100 x ~2,000 at the RSC15 settings): on this
    project's 2-core machine 2 threads trained no faster than 1 (README speed table), and a
    second thread that is descheduled stalls every operation. So 1 thread up to 2 CPUs,
    then all of them (bigger layers and batches do gain from threads)."""
    return 1 if cpus <= 2 else cpus


def prefer_sleeping_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin, unless the user chose otherwise.
    Takes effect only before OpenMP starts (training/__init__.py calls it first thing)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
