"""The int8 output layer (`python -m training export --quantize int8`) against the float32
export of the same trained model: Recall@20 and MRR@20 by full ranking, and the step's time.

    .venv/bin/python scripts/bench_quantize.py                  # 40,000 generated items
    .venv/bin/python scripts/bench_quantize.py --model runs/demo --test data/demo/test.tsv
    .venv/bin/python scripts/bench_quantize.py --results quantize   # docs/results/quantize.json

Without --model it draws a catalogue (training.data.synthetic, every item in the vocabulary,
the last day of sessions as test set) and trains a GRU4Rec on it for --epochs. Both exports
are then scored by onnxruntime through the project's evaluation (training/evaluate.py: every
test click ranked against all items, ties counted against the model) in batches of
--eval-batch sessions. The ranks are paired target by target. "within 0.5%" holds when both
metrics' relative differences are at most 0.5%.

Step times: ExportedModel.step (scores, TopK 20, new state), one onnxruntime thread, batches
of 1, 8 and 32 random clicks; the two exports take turns (order swapped every round) and
each figure is the median over --rounds of each round's median over --reps runs.

--scan-items times the same for random-weight models of each catalogue size (3 rounds): the
figures behind `export --quantize auto`'s threshold (training/quantize_check.py), from
which int8 takes less time than float32 at every batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.runtime import ExportedModel  # noqa: E402
from training.data.logs import Sessions  # noqa: E402
from training.evaluate import collect_ranks, metrics_from_ranks  # noqa: E402
from training.export import GraphScorer, export_model  # noqa: E402
from training.quantize_check import TOLERANCE  # noqa: E402  # int8 at most 0.5% below

CUTOFF = 20
KINDS = ("fp32", "int8")


def train_model(args: argparse.Namespace, out: Path) -> tuple[Path, Sessions, dict]:
    """Draw the catalogue, train on all but its last day; (model dir, test sessions, sizes)."""
    from training.config import Config
    from training.data.logs import ItemVocab, item_popularity, split_by_time
    from training.data.synthetic import generate
    from training.fit.train import fit, save_model

    cat = generate(n_items=args.n_items, n_sessions=args.n_sessions, seed=args.seed)
    train_events, test_events = split_by_time(cat.events, test_days=1.0)
    vocab = ItemVocab(cat.item_ids)  # the whole catalogue, clicked or not
    train = Sessions.from_events(train_events, vocab)
    test = Sessions.from_events(test_events, vocab)
    cfg = Config(
        layers=(args.layers,),
        loss="cross-entropy",
        batch_size=128,
        n_sample=512,
        n_epochs=args.epochs,
        seed=args.seed,
        device="cpu",
        threads=args.threads,
        sample_store_size=1_000_000,
    )
    started = time.perf_counter()
    model, history = fit(train, len(vocab), cfg, progress=False)
    info = {
        "source": "generated",
        "n_items": len(vocab),
        "train_events": train.n_events,
        "test_events": test.n_events,
        "train_s": round(time.perf_counter() - started, 1),
        "loss": history.epochs[-1].loss,
    }
    popularity = item_popularity(train, len(vocab))
    return save_model(out / "model", model, cfg, vocab, popularity, {}), test, info


def load_test(model_dir: Path, test_path: Path) -> tuple[Sessions, dict]:
    from training.data.logs import read_events
    from training.fit.train import load_model

    vocab = load_model(model_dir).vocab
    test = Sessions.from_events(read_events(test_path), vocab, "drop", str(test_path))
    return test, {"source": str(test_path), "n_items": len(vocab), "test_events": test.n_events}


def accuracy(exports: dict[str, Path], test: Sessions, batch: int) -> dict:
    """Recall/MRR@20 of each export, their relative differences and the paired rank changes."""
    ranks = {
        k: collect_ranks(GraphScorer(onnx.load(p / "model.onnx")), test, batch)
        for k, p in exports.items()
    }
    out: dict = {k: metrics_from_ranks(r, (CUTOFF,)) for k, r in ranks.items()}
    for metric in (f"recall@{CUTOFF}", f"mrr@{CUTOFF}"):
        base = out["fp32"][metric]
        out[f"{metric}_relative_diff"] = (out["int8"][metric] - base) / base if base else 0.0
    hit = {k: r <= CUTOFF for k, r in ranks.items()}
    out["targets"] = int(len(ranks["fp32"]))
    out["targets_rank_changed"] = int((ranks["fp32"] != ranks["int8"]).sum())
    out["hits_lost"] = int((hit["fp32"] & ~hit["int8"]).sum())
    out["hits_gained"] = int((~hit["fp32"] & hit["int8"]).sum())
    # export --quantize auto's rule: neither metric more than 0.5% below float32's
    out["within_tolerance"] = bool(
        out[f"recall@{CUTOFF}_relative_diff"] >= -TOLERANCE
        and out[f"mrr@{CUTOFF}_relative_diff"] >= -TOLERANCE
    )
    return out


def batch_dependence(model: ExportedModel, rows: int = 256, batch: int = 32) -> dict:
    """Each of `rows` random steps scored alone against in batches of `batch`: a per-run
    activation scale would make a row's ranking move with its neighbours; the fixed one
    (export_quantize.py) should leave every row as it is."""
    rng = np.random.default_rng(1)
    items = rng.integers(0, model.n_items, rows)
    state = np.tanh(rng.standard_normal((rows, model.state_size))).astype(np.float32)
    alone = [model.top_k(items[i : i + 1], state[i : i + 1], CUTOFF) for i in range(rows)]
    batched = [model.top_k(items[i : i + batch], state[i : i + batch], CUTOFF) for i in
               range(0, rows, batch)]  # fmt: skip
    top_alone = np.concatenate([a[1] for a in alone])
    top_batched = np.concatenate([b[1] for b in batched])
    scores_alone = np.concatenate([a[0] for a in alone])
    scores_batched = np.concatenate([b[0] for b in batched])
    return {
        "rows": rows,
        "batch": batch,
        "top20_same_rows": int((top_alone == top_batched).all(axis=1).sum()),
        "top20_same_set_rows": int(
            sum(set(a) == set(b) for a, b in zip(top_alone, top_batched, strict=True))
        ),
        "max_abs_top_score_diff": float(np.abs(scores_alone - scores_batched).max()),
    }


def _median_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e6


def step_times(models: dict[str, ExportedModel], batches: list[int], rounds: int, reps: int):
    """{batch: {kind: median us per step}}: the kinds alternate, order swapped each round."""
    rng = np.random.default_rng(0)
    n_items, size = models["fp32"].n_items, models["fp32"].state_size
    out: dict = {}
    for b in batches:
        items = rng.integers(0, n_items, b)
        state = np.tanh(rng.standard_normal((b, size))).astype(np.float32)  # GRU-like range
        runs: dict[str, list[float]] = {k: [] for k in models}
        for r in range(rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                model = models[kind]
                model.step(items, state, CUTOFF)  # warm
                runs[kind].append(
                    _median_us(lambda m=model, i=items, s=state: m.step(i, s, CUTOFF), reps)
                )
        out[b] = {k: float(np.median(v)) for k, v in runs.items()}
    return out


def scan_items(sizes: list[int], layers: int, batches: list[int], reps: int, work: Path) -> dict:
    """{n_items: {batch: {kind: median us}}} for random-weight models of each size."""
    from training.config import Config
    from training.data.logs import ItemVocab
    from training.fit.train import save_model
    from training.models.architectures import build_model

    out: dict = {}
    for n in sizes:
        torch.manual_seed(0)
        cfg = Config(layers=(layers,))
        vocab = ItemVocab([f"item{i}" for i in range(n)])
        popularity = np.ones(n, dtype=np.int64)
        model_dir = save_model(work / f"scan{n}", build_model(n, cfg).eval(), cfg, vocab,
                               popularity, {})  # fmt: skip
        models = {
            kind: ExportedModel.load(
                export_model(model_dir, work / f"scan{n}-{kind}",
                             quantize=None if kind == "fp32" else kind), "cpu", threads=1)
            for kind in KINDS
        }  # fmt: skip
        out[str(n)] = {str(b): t for b, t in step_times(models, batches, 3, reps).items()}
        ratios = ", ".join(f"batch {b} {t['int8'] / t['fp32']:.2f}x" for b, t in
                           out[str(n)].items())  # fmt: skip
        print(f"  {n:>6,} items: int8 takes {ratios} of float32's step", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a trained model dir (default: train one)")
    ap.add_argument("--test", type=Path, help="its test clicks (TSV), with --model")
    ap.add_argument("--n-items", type=int, default=40_000)
    ap.add_argument("--n-sessions", type=int, default=20_000)
    ap.add_argument("--layers", type=int, default=100, help="GRU units of the trained model")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batch", type=int, default=32, help="sessions per scoring run")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--scan-items", type=int, nargs="*", default=[2_000, 5_000, 10_000, 20_000,
                    40_000], help="catalogue sizes to time both forms at (random weights); "
                    "none: skip")  # fmt: skip
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    ap.add_argument("--results", help="also write docs/results/NAME.json (README: quantize)")
    args = ap.parse_args()
    if (args.model is None) != (args.test is None):
        ap.error("--model and --test go together (a trained model and its test clicks)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            model_dir, test, data = train_model(args, work)
        else:
            model_dir = args.model
            test, data = load_test(model_dir, args.test)
        print(f"# data: {json.dumps(data)}", flush=True)
        exports = {
            kind: export_model(model_dir, work / kind, quantize=None if kind == "fp32" else kind)
            for kind in KINDS
        }
        sizes = {k: (p / "model.onnx").stat().st_size for k, p in exports.items()}
        models = {k: ExportedModel.load(p, "cpu", threads=1) for k, p in exports.items()}
        acc = accuracy(exports, test, args.eval_batch)
        acc["int8_alone_vs_batched"] = batch_dependence(models["int8"])
        times = step_times(models, args.batches, args.rounds, args.reps)
        scan = {}
        if args.scan_items:
            print("step by catalogue size, random weights:", flush=True)
            scan = scan_items(args.scan_items, args.layers, args.batches, args.reps, work)
    print(f"{acc['targets']:,} test targets ranked against {data['n_items']:,} items, "
          f"scoring batches of {args.eval_batch}")  # fmt: skip
    print("| export | Recall@20 | MRR@20 | model.onnx MB |")
    print("|---|---|---|---|")
    for kind in KINDS:
        m = acc[kind]
        print(f"| {kind} | {m['recall@20']:.4f} | {m['mrr@20']:.4f} | {sizes[kind] / 1e6:.1f} |")
    rel_r, rel_m = acc["recall@20_relative_diff"], acc["mrr@20_relative_diff"]
    verdict = "not 0.5% below" if acc["within_tolerance"] else "MORE than 0.5% below"
    print(f"int8 vs fp32: Recall@20 {rel_r:+.3%}, MRR@20 {rel_m:+.3%}: {verdict}; ranks changed "
          f"for {acc['targets_rank_changed']:,} targets, top-20 hits lost {acc['hits_lost']}, "
          f"gained {acc['hits_gained']}")  # fmt: skip
    dep = acc["int8_alone_vs_batched"]
    print(f"int8, {dep['rows']} random rows scored alone vs in batches of {dep['batch']}: "
          f"top-20 identical for {dep['top20_same_rows']}, same set for "
          f"{dep['top20_same_set_rows']}; top scores differ by up to "
          f"{dep['max_abs_top_score_diff']:.2g}")  # fmt: skip
    print("step (scores, TopK 20, state), 1 thread, median us per step (per call):")
    for b, t in times.items():
        print(f"  batch {b:>2}: fp32 {t['fp32']:7.0f} ({t['fp32'] / b:6.1f}), int8 "
              f"{t['int8']:7.0f} ({t['int8'] / b:6.1f}): int8 takes "
              f"{t['int8'] / t['fp32']:.2f}x")  # fmt: skip
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "data": data,
        "settings": {k: v for k, v in settings.items() if k not in ("out", "results")},
        "model_onnx_bytes": sizes,
        "accuracy": acc,
        "step_us": {str(b): t for b, t in times.items()},
        "step_us_by_items": scan,
        "tolerance": TOLERANCE,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    if args.results:
        from provenance import write_results

        write_results(args.results, payload)


if __name__ == "__main__":
    main()
