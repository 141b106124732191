"""GRU4Rec against most-popular, item-KNN and V-SKNN on the default synthetic data, with one
evaluation (all items ranked, ties against the model): a markdown table and a bar chart, and
with --results NAME docs/results/NAME.json, from which `scripts/render_results.py` renders the
README table and the chart (the README's: --results baselines).

    .venv/bin/python scripts/compare_baselines.py [--config synthetic_demo] [--param n_epochs=3]
        [--data data/synthetic] [--png docs/baselines.png] [--seed 0] [--results baselines]

Data are generated into --data (the default synthetic catalogue and a last-day test split,
as `python -m training generate` writes them), then each model is fitted on train.tsv and
evaluated on test.tsv. "train s" is wall-clock fitting time on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import write_results  # noqa: E402
from render_results import plot_baselines  # noqa: E402

from training.config import Config  # noqa: E402
from training.data.logs import ItemVocab, Sessions, read_events  # noqa: E402
from training.data.synthetic import generate_to_dir  # noqa: E402
from training.evaluation.baselines import fit_and_evaluate, results_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="synthetic_demo", help="GRU4Rec config file or preset")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--data", default=str(ROOT / "data" / "synthetic"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "baselines.png"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", help="also write docs/results/NAME.json (README: baselines)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    paths = generate_to_dir(args.data, seed=args.seed)
    train_events = read_events(paths["train"])
    vocab = ItemVocab.from_events(train_events)
    train = Sessions.from_events(train_events, vocab)
    test = Sessions.from_events(read_events(paths["test"]), vocab, "drop")
    print(
        f"synthetic data in {args.data}: {train.n_events:,} train clicks in "
        f"{train.n_sessions:,} sessions, {len(vocab):,} items; {test.n_events:,} test clicks "
        f"in {test.n_sessions:,} sessions"
    )
    cfg = Config.from_sources(args.config, args.param)
    results = fit_and_evaluate(train, test, len(vocab), cutoffs=(20,), gru_config=cfg)
    print(f"\nGRU4Rec: --config {args.config} {' '.join(args.param)}; torch threads {args.threads}")
    print(results_table(results, cutoffs=(20,)))
    payload = {
        "data": {
            "seed": args.seed,
            "items": len(vocab),
            "train_clicks": train.n_events,
            "train_sessions": train.n_sessions,
            "test_clicks": test.n_events,
            "test_sessions": test.n_sessions,
            "predictions": results["gru4rec"]["n_events"],
        },
        "gru4rec_config": cfg.to_dict(),
        "threads": args.threads,
        "results": results,
    }
    if args.results:
        write_results(args.results, payload)
    plot_baselines(payload, Path(args.png))
    print(f"\nchart: {args.png}")


if __name__ == "__main__":
    main()
