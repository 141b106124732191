"""The web front's settings, from `python -m service.web` flags (see __main__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WebConfig:
    # host:port of each gRPC service; one per model version to compare, the first is the
    # default on the page
    grpc_targets: tuple[str, ...] = ("127.0.0.1:50051",)
    db: Path = Path("feedback.sqlite")  # the verdict store (created when missing)
    host: str = "127.0.0.1"  # loopback: the page has no login, so it is not exposed by default
    port: int = 8080
    # a file of item ids, one a line; None: the items.txt of the export directory that the
    # service reports in Status (works when both run on one machine or share the volume)
    items: Path | None = None
    images: Path | None = None  # a directory of <item>.png; None: drawn from the item id
    # per gRPC call: a sanity check wants an answer or a clear error quickly, and a healthy
    # service answers in milliseconds
    timeout_s: float = 3.0
    top_k: int = 5  # best and worst items shown

    def __post_init__(self) -> None:
        if not self.grpc_targets:
            raise ValueError("give at least one --grpc host:port")
        if len(set(self.grpc_targets)) != len(self.grpc_targets):
            raise ValueError(f"--grpc targets repeat: {', '.join(self.grpc_targets)}")
        if not 0 < self.timeout_s < math.inf:  # NaN too: every call would time out
            raise ValueError(f"--timeout-s={self.timeout_s} must be positive")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is not a TCP port (1-65535)")
        for target in self.grpc_targets:
            _, colon, port = target.rpartition(":")
            if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"--grpc {target!r} must be host:port, the port in 1-65535")
