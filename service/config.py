"""Service configuration: command-line flags, each with an environment variable behind it.

    python -m service --model runs/demo/export --port 50051 --metrics-port 9090
    RECSYS_MODEL_DIR=runs/demo/export RECSYS_PORT=50051 python -m service

A flag overrides its variable; the variable overrides the default. The Dockerfile and the
Kubernetes manifests set the same variables with the same defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .runtime import DEVICES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: Path
    host: str = "0.0.0.0"  # all interfaces: in a container the probes come from outside
    port: int = 50051  # gRPC; 0 = any free port (tests)
    metrics_port: int = 9090  # Prometheus /metrics over HTTP; 0 = any free port
    device: str = "auto"  # cuda when usable, else cpu
    cache_size: int = 100_000  # sessions; at 100 hidden units about 1 KB each
    cache_ttl_s: float = 1800.0  # a session idle for 30 minutes is forgotten
    grace_s: float = 10.0  # on SIGTERM, how long in-flight calls may take to finish
    max_clicks: int = 200  # longest click history a request may carry
    workers: int = 8  # threads serving calls; more calls than 4x this wait or are refused
    # onnxruntime intra-op threads per call (0 = one per core). Calls already run side by
    # side in the workers: on 2 cores, 1 gave 1,058 calls/s at concurrency 4 against 729
    # for 0 (scripts/bench_service.py)
    ort_threads: int = 1
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"{name}={getattr(self, name)} is not a TCP port (0-65535)")
        if self.device not in DEVICES:
            problems.append(f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        if self.cache_size < 0:
            problems.append(f"cache_size={self.cache_size} must be >= 0 (0 turns it off)")
        for name in ("cache_ttl_s", "max_clicks", "workers"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if self.grace_s < 0 or self.ort_threads < 0:
            problems.append("grace_s and ort_threads must not be negative")
        if self.log_level.upper() not in LOG_LEVELS:
            problems.append(f"log_level={self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if problems:
            raise ValueError("invalid service configuration: " + "; ".join(problems))

    @property
    def log_level_number(self) -> int:
        return int(getattr(logging, self.log_level.upper()))


# field -> (flag, environment variable, parser, help)
_OPTIONS: dict[str, tuple[str, str, Callable[[str], Any], str]] = {
    "model_dir": (
        "--model",
        "RECSYS_MODEL_DIR",
        Path,
        "export directory (python -m training export)",
    ),
    "host": ("--host", "RECSYS_HOST", str, "address to listen on"),
    "port": ("--port", "RECSYS_PORT", int, "gRPC port"),
    "metrics_port": ("--metrics-port", "RECSYS_METRICS_PORT", int, "Prometheus HTTP port"),
    "device": ("--device", "RECSYS_DEVICE", str, "auto, cpu or cuda"),
    "cache_size": ("--cache-size", "RECSYS_CACHE_SIZE", int, "sessions kept; 0 = no cache"),
    "cache_ttl_s": ("--cache-ttl-s", "RECSYS_CACHE_TTL_S", float, "idle seconds a session is kept"),
    "grace_s": ("--grace-s", "RECSYS_GRACE_S", float, "seconds in-flight calls get on SIGTERM"),
    "max_clicks": ("--max-clicks", "RECSYS_MAX_CLICKS", int, "most clicks a request may carry"),
    "workers": ("--workers", "RECSYS_WORKERS", int, "threads serving calls"),
    "ort_threads": (
        "--ort-threads",
        "RECSYS_ORT_THREADS",
        int,
        "onnxruntime threads per call; 0 = one per core",
    ),
    "log_level": ("--log-level", "RECSYS_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
}


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Flags over environment over defaults. Raises ValueError naming the bad flag/variable."""
    environ = os.environ if environ is None else environ
    defaults = {f.name: f.default for f in fields(ServiceConfig)}
    values: dict[str, Any] = {}
    for name, (flag, var, parse, _) in _OPTIONS.items():
        if var in environ and environ[var] != "":
            try:
                values[name] = parse(environ[var])
            except ValueError:
                raise ValueError(f"{var}={environ[var]!r} is not a valid {flag} value") from None
    args = _parser(defaults).parse_args(argv)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if "model_dir" not in values:
        raise ValueError("no model given: pass --model DIR or set RECSYS_MODEL_DIR")
    return ServiceConfig(**values)


def _parser(defaults: Mapping[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="gRPC session-based recommendation service (recsys.v1.Recommender).",
    )
    for name, (flag, var, parse, text) in _OPTIONS.items():
        default = defaults[name]
        shown = "" if not isinstance(default, (int, float, str)) else f", default {default}"
        parser.add_argument(
            flag, dest=name, type=parse, default=None, help=f"{text} [{var}{shown}]"
        )
    return parser
