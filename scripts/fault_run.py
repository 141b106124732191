"""Fault run: two service processes share a load, one is SIGKILLed, and no call may be lost.

    .venv/bin/python scripts/fault_run.py [--items 40000] [--load-s 8] [--kill-after-s 3] \\
        [--concurrency 16] [--export DIR] [--json]

1. builds a GRU4Rec export with random weights (scripts/bench_service.py `build_export`),
   unless --export names one;
2. starts two `python -m service` on 127.0.0.1, port 0 each, and reads the ports from
   their `gRPC on 127.0.0.1:PORT` log lines;
3. drives both with service.tools.loadgen (closed loop, synthetic sessions), every caller listing
   both targets, half of them trying A first and half B first;
4. SIGKILLs A after --kill-after-s and keeps the load on until --load-s;
5. prints calls, lost (calls neither process answered: must be 0, since every call that
   failed on A is sent again to B), retried, p99 overall and per second around the kill,
   and errors by status code.
Exit status 0 when no call was lost or failed. Every process is stopped on the way out.
--results NAME also writes the figures to docs/results/NAME.json (the README's line: fault).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from service.tools.loadgen import LoadResult, LoadSpec, read_items, run_load  # noqa: E402

START_TIMEOUT_S = 120.0  # loading a 40,000-item model on a busy 2-core box takes seconds


class Service:
    """`python -m service` on 127.0.0.1 with ephemeral ports. A thread drains its log as it
    comes, so a chatty process never blocks on a full pipe."""

    def __init__(self, export_dir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--model", str(export_dir), "--host", "127.0.0.1",
             "--port", "0", "--metrics-port", "0"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own process group: the supervisor and its workers
        )  # fmt: skip
        self.lines: list[str] = []
        self.port = 0
        self.workers = 1  # the supervisor's first line says how many
        self.serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if found := re.search(r"gRPC on 127\.0\.0\.1:(\d+)(?:.*, (\d+) workers)?", line):
                self.port = int(found[1])
                self.workers = max(self.workers, int(found[2] or 1))
            # a pod of several workers serves once all have loaded (the supervisor's line);
            # until then a worker still loading answers UNAVAILABLE
            if ("serving model" in line and self.workers == 1) or (
                "workers have loaded the model: serving" in line
            ):
                self.serving.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        """Block until the model serves; raises RuntimeError with the log if it does not."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.serving.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start:\n" + "".join(self.lines[-20:]))
        if not self.port:
            raise RuntimeError("no 'gRPC on 127.0.0.1:PORT' line:\n" + "".join(self.lines))

    def stop(self) -> None:
        """SIGTERM (the service drains), SIGKILL if it has not ended 30 s later."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fault_run(export_dir: Path, args: argparse.Namespace) -> dict:
    """Start two services, load both, kill the first mid-run; the report as a dict."""
    services = [Service(export_dir), Service(export_dir)]
    try:
        for service in services:
            service.wait_serving()
        victim, survivor = services
        spec = LoadSpec(
            (victim.target, survivor.target),
            calls=10**9,  # the duration ends the run
            duration_s=args.load_s,
            concurrency=args.concurrency,
            spread_targets=True,
            item_ids=tuple(read_items(export_dir / "items.txt")),
            deadline_ms=args.deadline_ms,
        )
        killed_at: list[float] = []

        def kill() -> None:
            # the whole replica, as when a pod dies: the supervisor and every worker
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed_at.append(time.perf_counter())

        timer = threading.Timer(args.kill_after_s, kill)
        timer.start()
        try:
            result = run_load(spec)
        finally:
            timer.cancel()
        survivor_alive = survivor.proc.poll() is None
    finally:
        for service in services:
            service.stop()
    if not killed_at:
        raise RuntimeError("the load ended before the kill; make --load-s longer")
    out = report(result, killed_at[0] - result.started, victim.proc.returncode, survivor_alive)
    return {"items": len(spec.item_ids), **out}


def report(result: LoadResult, kill_s: float, killed_status: int | None, alive: bool) -> dict:
    summary = result.summary()
    second = int(kill_s)
    around = [w for w in result.timeline() if second - 1 <= w["t_s"] <= second + 2]
    return {
        "calls": summary["calls"],
        "lost": summary["lost"],
        "retried": summary["retried"],
        "errors": summary["error_codes"],
        "p99_ms": summary["p99_ms"],
        "kill_at_s": round(kill_s, 3),
        "killed_exit_status": killed_status,  # -9: it really died of the SIGKILL
        "survivor_alive": alive,
        "around_kill": around,
        "summary": summary,
        "timeline": result.timeline(),
    }


def print_report(r: dict, args: argparse.Namespace) -> None:
    print(
        f"fault run: 2 services, {r['items']:,} items, {args.load_s:g} s at concurrency "
        f"{args.concurrency}, SIGKILL of the first at {r['kill_at_s']:.3f} s "
        f"(exit status {r['killed_exit_status']}; survivor alive: {r['survivor_alive']})"
    )
    s = r["summary"]
    print(
        f"calls {r['calls']} ({s['calls_per_s']:.0f}/s), lost {r['lost']}, retried "
        f"{r['retried']}, errors {r['errors'] or 0}; p50 {s['p50_ms']:.2f} ms, p99 overall "
        f"{r['p99_ms']:.2f} ms, max {s['max_ms']:.2f} ms"
    )
    for w in r["around_kill"]:
        mark = "  <- kill" if w["t_s"] <= r["kill_at_s"] < w["t_s"] + 1 else ""
        p99 = "-" if w["p99_ms"] is None else f"{w['p99_ms']:.2f} ms"
        print(
            f"  {w['t_s']:g}-{w['t_s'] + 1:g} s: ok {w['ok']}, failed {w['failed']}, "
            f"p99 {p99}{mark}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--layers", type=int, nargs="+", default=[100])
    parser.add_argument("--export", type=Path, help="serve this export instead of building one")
    parser.add_argument("--load-s", type=float, default=8.0, help="seconds of load in all")
    parser.add_argument("--kill-after-s", type=float, default=3.0, help="seconds into the load")
    parser.add_argument("--concurrency", type=int, default=16, help="callers, half per target")
    parser.add_argument("--deadline-ms", type=float, default=5000.0, help="per call")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--results", help="also write docs/results/NAME.json")
    args = parser.parse_args()
    if args.kill_after_s >= args.load_s:
        parser.error("--kill-after-s must come before the end of --load-s")
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export
        if export_dir is None:
            from bench_service import build_export  # torch: only when building

            export_dir = build_export(Path(tmp), args.items, tuple(args.layers))
        result = fault_run(export_dir, args)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result, args)
    if args.results:
        from provenance import write_results

        settings = {k: v for k, v in vars(args).items() if k not in ("json", "results", "export")}
        write_results(args.results, {"settings": settings, **result})
    return 0 if result["lost"] == 0 and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
