"""Peak memory of a training epoch against its number of clicks: it should grow only by the
index arrays (a few bytes per click), not by anything per step.

    python scripts/bench_memory.py [--events 300000 3000000] [--param layers=100 ...]

Each size runs in a fresh process (random sessions, as bench_train.py), which reports its
peak resident set size after one epoch; the last line gives the growth per click.
--results NAME writes docs/results/NAME.json for scripts/render_results.py (README: memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_one(n_items: int, n_events: int, params: list[str]) -> dict:
    from bench_train import random_sessions

    from training.config import Config
    from training.fit.train import fit

    data = random_sessions(n_items, n_events)
    before = peak_rss_bytes()
    cfg = Config.from_sources(None, ["n_epochs=1", "threads=1", *params])
    _, history = fit(data, n_items, cfg, progress=False)
    return {"events": history.epochs[0].events, "before": before, "peak": peak_rss_bytes()}


def measure(n_items: int, sizes: list[int], params: list[str]) -> list[dict]:
    """One fresh process per size; each size's figures."""
    results = []
    for n_events in sizes:
        command = [sys.executable, __file__, "--run", str(n_events), "--items", str(n_items)]
        command += [token for p in params for token in ("--param", p)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=37_483)
    parser.add_argument("--events", type=int, nargs="+", default=[300_000, 3_000_000])
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--results", help="also write docs/results/NAME.json (README: memory)")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.items, args.run, args.param)))
        return
    results = measure(args.items, args.events, args.param)
    for r in results:
        print(f"{r['events']:>10,} training events: peak RSS {r['peak'] / 2**20:,.0f} MiB")
    first, last = results[0], results[-1]
    per_event = (last["peak"] - first["peak"]) / max(last["events"] - first["events"], 1)
    print(f"growth: {per_event:.1f} bytes per extra event")
    if args.results:
        from provenance import write_results

        payload = {"items": args.items, "param": args.param, "runs": results}
        write_results(args.results, {**payload, "bytes_per_event": per_event})


if __name__ == "__main__":
    main()
