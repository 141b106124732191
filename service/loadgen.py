"""Bounded closed-loop load generator for recsys.v1.Recommender.

    python -m service.loadgen --target 127.0.0.1:50051 --items-file export/items.txt \\
        --calls 5000 --concurrency 4 --duration-s 30

`concurrency` workers each replay synthetic sessions click by click, as a shop frontend
would: the same session id with one more click per call, item ids drawn uniformly from the
items file, session lengths 1 + geometric (mean `mean_length`, at most `max_clicks`).
A worker sends its next call when the previous one returned (closed loop), and the run stops
at whichever bound comes first: `calls` in total or `duration_s` seconds. Latency is
measured per call on the client side, so on one machine it includes the client's own work.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from .proto import recommender_pb2 as pb
from .proto import recommender_pb2_grpc as pb_grpc


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)  # successful calls only
    errors: Counter = field(default_factory=Counter)  # status code name -> count
    elapsed_s: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.latencies_s) + sum(self.errors.values())

    def summary(self) -> dict[str, float]:
        """p50/p90/p99 in milliseconds over successful calls, calls/s over all calls."""
        lat = np.asarray(self.latencies_s) * 1000.0
        pct = np.percentile(lat, [50, 90, 99]) if len(lat) else np.full(3, np.nan)
        return {
            "calls": self.calls,
            "errors": sum(self.errors.values()),
            "seconds": round(self.elapsed_s, 3),
            "calls_per_s": round(self.calls / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(float(pct[0]), 3),
            "p90_ms": round(float(pct[1]), 3),
            "p99_ms": round(float(pct[2]), 3),
        }


class _Budget:
    """Hands out call tickets until `calls` are taken or the deadline passes."""

    def __init__(self, calls: int, duration_s: float):
        self.left = calls
        self.deadline = time.perf_counter() + duration_s
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.perf_counter() >= self.deadline:
                return False
            self.left -= 1
            return True


def run_load(
    target: str,
    item_ids: Sequence[str],
    calls: int,
    concurrency: int,
    duration_s: float,
    top_k: int = 20,
    mean_length: float = 6.0,
    max_clicks: int = 200,
    seed: int = 0,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Run the load; returns per-call latencies and error counts. Bounded by both calls and
    duration_s, so it always ends."""
    if calls <= 0 or concurrency <= 0 or duration_s <= 0 or not item_ids:
        raise ValueError("calls, concurrency and duration_s must be positive, items non-empty")
    result = LoadResult()
    lock = threading.Lock()
    budget = _Budget(calls, duration_s)
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        stub = pb_grpc.RecommenderStub(channel)

        def worker(w: int) -> None:
            rng = np.random.default_rng([seed, w])
            session, length = 0, 0
            clicks: list[str] = []
            while budget.take():
                if len(clicks) >= length:  # next session
                    session += 1
                    clicks = []
                    length = min(1 + int(rng.geometric(1.0 / mean_length)), max_clicks)
                clicks.append(item_ids[int(rng.integers(len(item_ids)))])
                request = pb.RecommendRequest(
                    session_id=f"load-{seed}-{w}-{session}", clicks=clicks, top_k=top_k
                )
                started = time.perf_counter()
                try:
                    stub.Recommend(request, timeout=timeout_s)
                    took, code = time.perf_counter() - started, None
                except grpc.RpcError as err:
                    took, code = 0.0, err.code().name
                with lock:
                    if code is None:
                        result.latencies_s.append(took)
                    else:
                        result.errors[code] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.elapsed_s = time.perf_counter() - started
    return result


def read_items(path: str) -> list[str]:
    """Item ids, one a line (an export's items.txt)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [line for line in f.read().split("\n") if line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.loadgen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--items-file", required=True, help="item ids, one a line (items.txt)")
    parser.add_argument("--calls", type=int, default=2000, help="stop after this many calls")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--duration-s", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--mean-length", type=float, default=6.0, help="mean session length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    result = run_load(
        args.target,
        read_items(args.items_file),
        args.calls,
        args.concurrency,
        args.duration_s,
        args.top_k,
        args.mean_length,
        seed=args.seed,
    )
    s = result.summary()
    if args.json:
        print(json.dumps({**s, "error_codes": dict(result.errors)}))
    else:
        print(
            f"{s['calls']} calls in {s['seconds']:.1f} s ({s['calls_per_s']:.1f} calls/s), "
            f"concurrency {args.concurrency}: p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f} "
            f"ms, p99 {s['p99_ms']:.2f} ms; errors {dict(result.errors) or 0}"
        )
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
