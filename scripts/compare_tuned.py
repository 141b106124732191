"""Tuned GRU4Rec against its default configuration and every baseline (most-popular,
item-KNN, V-SKNN, STAN, VSTAN with their parameters searched too), all tuned on the training
data alone and evaluated once on the test split: a markdown table, and
with --results NAME docs/results/NAME.json, from which scripts/render_results.py renders
the README table (with the search's summary.json beside --tuned, when there is one).

    .venv/bin/python -m training generate --out data/demo
    .venv/bin/python -m training tune --train data/demo/train.tsv --out runs/tune-demo \\
        --config synthetic_demo --param threads=1 --param n_epochs=5 --range layers=64:256 \\
        --trials 40
    .venv/bin/python scripts/compare_tuned.py --data data/demo --tuned runs/tune-demo/best.json \\
        --out runs/compare-tuned --blend --results tuned

STAN/VSTAN are searched (`--knn-trials` draws each) on the same validation split as `tune`
(the last `--valid-days` of train.tsv), then refitted on all of train.tsv; the chosen
parameters are kept in OUT/knn_params.json and reused when present (`--knn-only` stops
there). Both GRU4Rec models are trained on all of train.tsv and saved in OUT/default and
OUT/tuned (for `python -m training report`). With --blend, the tuned model plus VSTAN
(training.evaluation.blend), the weight chosen on the validation split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import write_results  # noqa: E402

from training.config import Config  # noqa: E402
from training.data.logs import ItemVocab, Sessions, item_popularity, read_events  # noqa: E402
from training.evaluate import GRUScorer, evaluate  # noqa: E402
from training.evaluation.baselines import fit_and_evaluate  # noqa: E402
from training.evaluation.blend import BlendScorer, choose_weight  # noqa: E402
from training.evaluation.knn import KNNParams, SequenceKNN, search_params, session_end_times  # noqa: E402
from training.evaluation.tune import validation_split  # noqa: E402
from training.fit.train import fit, save_model  # noqa: E402


def knn_params(train_events, out: Path, trials: int, valid_days: float) -> dict[str, KNNParams]:
    path = out / "knn_params.json"
    if path.exists():
        return {k: KNNParams(**v) for k, v in json.loads(path.read_text()).items()}
    fit_part, valid_part = validation_split(train_events, valid_days)
    chosen, searched = {}, {}
    for kind in ("stan", "vstan"):
        chosen[kind], searched[kind] = search_params(fit_part, valid_part, kind, trials)
        print(f"{kind}: {chosen[kind]}")
    path.write_text(json.dumps({k: asdict(v) for k, v in chosen.items()}, indent=2) + "\n")
    (out / "knn_search.json").write_text(json.dumps(searched, indent=2) + "\n")
    return chosen


def train_gru(name, cfg, train, test, vocab, out: Path):
    started = time.perf_counter()
    model, history = fit(train, len(vocab), cfg, progress=False)
    seconds = time.perf_counter() - started
    result = {**evaluate(GRUScorer(model), test, (1, 5, 10, 20)), "train_seconds": seconds}
    meta = {
        "train_clicks": train.n_events,
        "train_seconds": round(seconds, 2),
        "epochs": [{"epoch": e.epoch, "loss": e.loss} for e in history.epochs],
        "evaluation": result,
    }
    save_model(out / name, model, cfg, vocab, item_popularity(train, len(vocab)), meta)
    return result, model


def blend_weight(
    train_events, cfg, params: KNNParams, valid_days: float, metric: str
) -> tuple[float, dict]:
    """The VSTAN weight of the blend, chosen by `metric` on the validation split, with a model
    and VSTAN fitted on the rest of the training file."""
    fit_part, valid_part = validation_split(train_events, valid_days)
    vocab = ItemVocab.from_events(fit_part)
    train = Sessions.from_events(fit_part, vocab)
    valid = Sessions.from_events(valid_part, vocab, "drop")
    model, _ = fit(train, len(vocab), cfg, progress=False)
    knn = SequenceKNN(train, len(vocab), session_end_times(fit_part, train), params)
    weight, by_weight = choose_weight(GRUScorer(model), knn, valid, metric=metric)
    for w, m in by_weight.items():
        print(
            f"blend weight {w}: validation MRR@20 {m['mrr@20']:.4f}, Recall@20 {m['recall@20']:.4f}"
        )
    return weight, by_weight


def payload(args, chosen: dict[str, KNNParams], blended, results: dict, test) -> dict:
    """What the README's tuning table and its paragraph are rendered from."""
    summary = Path(args.tuned).parent / "summary.json"
    return {
        "data": {"path": args.data, "test_clicks": test.n_events},
        "default": args.default,
        "tuned": args.tuned,
        "tuned_config": json.loads(Path(args.tuned).read_text()),
        "search": json.loads(summary.read_text()) if summary.exists() else None,
        "knn_trials": args.knn_trials,
        "knn_params": {k: asdict(v) for k, v in chosen.items()},
        "blend": blended,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--tuned", default=str(ROOT / "runs" / "tune-demo" / "best.json"))
    ap.add_argument("--default", default="synthetic_demo", help="config file or preset")
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare-tuned"))
    ap.add_argument("--knn-trials", type=int, default=12)
    ap.add_argument("--valid-days", type=float, default=1.0)
    ap.add_argument("--knn-only", action="store_true")
    ap.add_argument("--blend", action="store_true", help="also the tuned model + VSTAN")
    ap.add_argument("--blend-metric", default="mrr@20", help="picks the blend weight")
    ap.add_argument("--results", help="also write docs/results/NAME.json (README: tuned)")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_events = read_events(Path(args.data) / "train.tsv")
    chosen = knn_params(train_events, out, args.knn_trials, args.valid_days)
    if args.knn_only:
        return
    vocab = ItemVocab.from_events(train_events)
    train = Sessions.from_events(train_events, vocab)
    test = Sessions.from_events(read_events(Path(args.data) / "test.tsv"), vocab, "drop")
    ends = session_end_times(train_events, train)
    results = fit_and_evaluate(train, test, len(vocab), (1, 5, 10, 20), None, ends, chosen)
    models = {}
    for name, source in (("default", args.default), ("tuned", args.tuned)):
        cfg = Config.from_sources(source, ["threads=1"])
        results[f"gru4rec-{name}"], models[name] = train_gru(name, cfg, train, test, vocab, out)
    blended = None
    if args.blend:
        cfg = Config.from_sources(args.tuned, ["threads=1"])
        vstan = chosen["vstan"]
        weight, by_weight = blend_weight(
            train_events, cfg, vstan, args.valid_days, args.blend_metric
        )
        blended = {"metric": args.blend_metric, "weight": weight, "by_weight": by_weight}
        knn = SequenceKNN(train, len(vocab), ends, chosen["vstan"])
        blend = BlendScorer(GRUScorer(models["tuned"]), knn, weight)
        name = f"gru4rec-tuned + {weight} vstan"
        results[name] = {**evaluate(blend, test, (1, 5, 10, 20)), "train_seconds": 0.0}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.results:
        write_results(args.results, payload(args, chosen, blended, results, test))
    print(f"{test.n_events:,} test clicks -> {results['most-popular']['n_events']:,} predictions")
    print("| model | Recall@20 | MRR@20 | Recall@5 | MRR@5 | fit s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | {r['recall@5']:.4f} | "
            f"{r['mrr@5']:.4f} | {r['train_seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
