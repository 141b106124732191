"""Training speed in events/s, ours and (optionally) the reference GRU4Rec's on the same data.

    python scripts/bench_train.py [--items 37483] [--events 200000] [--param threads=1 ...]
    python scripts/bench_train.py --reference ~/src/GRU4Rec_PyTorch_Official --pairs 3

Data are random sessions with Zipf-like popularity (speed does not depend on what is learnt),
at the reference's published RSC15 settings unless --param says otherwise. Every run is a
fresh process; with --reference (a local checkout holding gru4rec_pytorch.py; nothing is
downloaded) ours and the reference's run in turns, pair after pair, on the same data and
thread count, and the last lines give the median and range of each and of their ratio.
events/s is the first epoch's, as each implementation reports it (its own clock around its
epoch loop, sample refills included, set-up excluded); `wall` is the whole process.
--results NAME adds the run to docs/results/NAME.json (one row per catalogue and event count;
the README's training-speed table is NAME=train_speed, rendered by scripts/render_results.py).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from training.data.logs import Sessions  # noqa: E402

RSC15 = [
    "loss=cross-entropy",
    "constrained_embedding=True",
    "embedding=0",
    "layers=100",
    "batch_size=32",
    "dropout_p_embed=0.0",
    "dropout_p_hidden=0.4",
    "learning_rate=0.2",
    "momentum=0.2",
    "n_sample=2048",
    "sample_alpha=0.5",
    "logq=1.0",
    "n_epochs=1",
]
# the reference's constructor arguments that a Config field maps onto one to one
REFERENCE_PARAMS = [
    "loss",
    "layers",
    "batch_size",
    "dropout_p_embed",
    "dropout_p_hidden",
    "learning_rate",
    "momentum",
    "sample_alpha",
    "n_sample",
    "embedding",
    "constrained_embedding",
    "n_epochs",
    "bpreg",
    "elu_param",
    "logq",
]


def random_sessions(n_items: int, n_events: int, seed: int = 0) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(2, rng.geometric(1 / 5, size=n_events // 3))
    lengths = lengths[np.cumsum(lengths) <= n_events]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like, like real click logs
    items = rng.choice(n_items, size=int(offsets[-1]), p=pop / pop.sum())
    return Sessions(items.astype(np.int64), offsets, np.arange(len(lengths)).astype(str))


def run_ours(args: argparse.Namespace) -> dict:
    import torch

    from training.config import Config
    from training.evaluate import GRUScorer, collect_ranks
    from training.fit.train import fit

    cfg = Config.from_sources(None, RSC15 + [f"threads={args.threads}"] + args.param)
    data = random_sessions(args.items, args.events)
    model, history = fit(data, args.items, cfg, progress=False)
    result = {"events_per_s": history.epochs[0].events_per_second}
    if args.eval:  # full ranking of every click against all items, batches of 512 sessions
        started = time.perf_counter()
        ranks = collect_ranks(GRUScorer(model), data, batch_size=512)
        result["eval_events_per_s"] = len(ranks) / (time.perf_counter() - started)
    return {**result, "threads": torch.get_num_threads()}


def run_reference(args: argparse.Namespace) -> dict:
    """The reference's own training loop on the same sessions, on the CPU."""
    import contextlib
    import io

    import pandas as pd
    import torch

    from training.config import Config

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(args.reference).expanduser()))
    import gru4rec_pytorch  # the user's checkout of hidasib/GRU4Rec_PyTorch_Official

    cfg = Config.from_sources(None, RSC15 + args.param)
    data = random_sessions(args.items, args.events)
    session = np.repeat(np.arange(len(data.offsets) - 1), np.diff(data.offsets))
    # Time orders sessions as ours do (by start); item ids are the same indices
    frame = pd.DataFrame(
        {"SessionId": session, "ItemId": data.items, "Time": np.arange(len(session))}
    )
    params = {name: getattr(cfg, name) for name in REFERENCE_PARAMS}
    params["layers"] = list(cfg.layers)
    model = gru4rec_pytorch.GRU4Rec(**params, device=torch.device("cpu"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # compatibility_mode=False: its numpy initialisation hands float64 arrays to float32
        # parameters under numpy 2 and fails; the torch initialisation trains at the same speed
        model.fit(frame, sample_cache_max_size=cfg.sample_store_size, compatibility_mode=False)
    # its epoch line ends "[x mb/s | y e/s]"
    speeds = re.findall(r"\|\s*([0-9.]+)\s*e/s", printed.getvalue())
    if not speeds:
        raise RuntimeError(f"no 'e/s' figure in the reference's output:\n{printed.getvalue()}")
    return {"events_per_s": float(speeds[0]), "threads": torch.get_num_threads()}


def one_run(which: str, argv: list[str]) -> dict:
    """Run one implementation in a fresh process; its figures, with the process's wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--run", which, *argv], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{which} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - started}


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=37_483)  # RSC15's catalogue
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both")
    parser.add_argument("--param", action="append", default=[], help="name=value, as in train")
    parser.add_argument("--reference", help="local checkout of GRU4Rec_PyTorch_Official")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each, in turns")
    parser.add_argument("--eval", action="store_true", help="also time our evaluation")
    parser.add_argument("--results", help="add this run to docs/results/NAME.json")
    parser.add_argument("--run", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        result = run_ours(args) if args.run == "ours" else run_reference(args)
        print(json.dumps(result))
        return
    argv = [
        "--items",
        str(args.items),
        "--events",
        str(args.events),
        "--threads",
        str(args.threads),
    ]
    argv += [token for p in args.param for token in ("--param", p)]
    argv += ["--reference", args.reference] if args.reference else []
    argv += ["--eval"] if args.eval else []
    names = ["ours", "reference"] if args.reference else ["ours"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for pair in range(args.pairs):
        for name in names:
            result = one_run(name, argv)
            results[name].append(result)
            print(
                f"pair {pair + 1} {name:9s} {result['events_per_s']:8,.0f} events/s  "
                f"threads={result['threads']}  wall {result['wall_s']:.1f} s"
                + (
                    f"  eval {result['eval_events_per_s']:,.0f} events/s"
                    if "eval_events_per_s" in result
                    else ""
                ),
                flush=True,
            )
    for name in names:
        print(f"{name:9s} events/s {_summary([r['events_per_s'] for r in results[name]])}")
    ratios = []
    if args.reference:
        ratios = [
            o["events_per_s"] / r["events_per_s"]
            for o, r in zip(results["ours"], results["reference"], strict=True)
        ]
        print(
            f"ours / reference, paired: median {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}x) over {len(ratios)} pairs"
        )
    if args.results:
        from provenance import write_results

        key = {"items": args.items, "events": args.events, "threads": args.threads}
        key["param"] = args.param
        runs = {"settings": RSC15 + args.param, "runs": results, "paired_ratios": ratios}
        write_results(args.results, runs, key=key)


if __name__ == "__main__":
    main()
