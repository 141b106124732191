"""Online baselines, the frozen model, the online layer and the shipped defaults, replayed on a
news-profile and a shop-profile log; writes docs/results/freshness.json.

    .venv/bin/python scripts/bench_freshness.py                  # both profiles (~10 min, 2 cores)
    .venv/bin/python scripts/bench_freshness.py --scale 0.05 --profiles news    # quick
    .venv/bin/python scripts/bench_freshness.py --work /tmp/fresh   # keep data and models

Data: `python -m training generate --profile NAME`'s generator (training.profiles; 5 days of
history and a test day, every click kept). GRU4Rec is trained on the history (GRU4Rec
preprocessing, the synthetic_demo preset shortened to 3 epochs) and exported. Every method
is scored by service.replay's walk: the history learnt first, then every test click
predicted and then learnt, every next click counted (items the model cannot know included).
The service runs as a site that announces each item when it publishes it (its catalogue
holds every item of the log; clicks still go through the learning guard). Methods:
service.online_baselines' four, the frozen model (online layer off), the online layer alone
(no model), the shipped defaults (the online ranker over the model and the online
statistics) and the previous default (the fixed mixture blend, --scorer mixture).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.blend import BlendConfig  # noqa: E402
from service.online_baselines import BASELINES  # noqa: E402
from service.replay import (  # noqa: E402
    Click,
    build_engine,
    log_items,
    read_clicks,
    replay,
    replay_baseline,
)
from training.config import Config  # noqa: E402
from training.data import ItemVocab, Sessions, item_popularity, preprocess, read_events  # noqa: E402
from training.export import export_model  # noqa: E402
from training.profiles import PROFILES, profile_to_dir  # noqa: E402
from training.train import fit, save_model  # noqa: E402

K = 20
ROOT = Path(__file__).resolve().parents[1]
# synthetic_demo shortened as in bench_churn.py: training stays near a minute on 2 cores
SETTINGS = ["n_epochs=3", "sample_store_size=200000", "threads=1"]
ENGINES = {  # method -> build_engine arguments
    "frozen model": {"online": False},
    "online layer alone": {"use_model": False},
    "shipped defaults (online ranker)": {},
    "previous default (mixture blend, weight 0.7)": {"blend": BlendConfig(scorer="mixture")},
}


def data(work: Path, name: str, scale: float, seed: int) -> Path:
    """The profile's directory under work, generated unless already there."""
    out = work / name
    if not (out / "test.tsv").exists():
        out.mkdir(parents=True, exist_ok=True)
        profile_to_dir(out, name, days=6.0, seed=seed, scale=scale)
    return out


def train_export(out: Path) -> float:
    """Train GRU4Rec on out/train.tsv and export it to out/export (unless there); seconds."""
    if (out / "export" / "items.txt").exists():
        return 0.0
    started = time.perf_counter()
    cfg = Config.from_sources("synthetic_demo", SETTINGS)
    clicks = preprocess(read_events(out / "train.tsv"))
    vocab = ItemVocab.from_events(clicks)
    train = Sessions.from_events(clicks, vocab)
    model, _ = fit(train, len(vocab), cfg, progress=False)
    save_model(out / "model", model, cfg, vocab, item_popularity(train, len(vocab)), {})
    export_model(out / "model", out / "export")
    return time.perf_counter() - started


def row(method: str, figures: dict) -> dict:
    out = {
        "method": method,
        f"recall@{K}": round(figures[f"recall@{K}"], 4),
        f"mrr@{K}": round(figures[f"mrr@{K}"], 4),
        "seconds": figures["seconds"],
    }
    print(f"| {method} | {out[f'recall@{K}']:.4f} | {out[f'mrr@{K}']:.4f} | {out['seconds']} |",
          flush=True)  # fmt: skip
    return out


def profile(out: Path, history: list[Click], test: list[Click]) -> dict:
    """Every method's row on one profile, and the ranker's learnt weights and hit rates."""
    print(f"\n| method | Recall@{K} | MRR@{K} | seconds |\n|---|---:|---:|---:|")
    rows = [
        row(name, replay_baseline(make(), history, test, (K,))) for name, make in BASELINES.items()
    ]
    online: dict = {}
    items = log_items(history, test)
    for method, settings in ENGINES.items():
        engine = build_engine(out / "export", announce=items, **settings)
        figures = replay(engine, history, test, (K,))
        rows.append(row(method, figures))
        if method.startswith("shipped"):
            online = figures["online"]
    return {"rows": rows, "online": online}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument("--scale", type=float, default=0.1, help="training.profiles' size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep data and models here (reused)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "freshness.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.profiles:
            out = data(work, name, args.scale, args.seed)
            train_s = train_export(out)
            history, test = read_clicks(out / "train.tsv"), read_clicks(out / "test.tsv")
            print(f"\n{name}: {len(history):,} history clicks, {len(test):,} test clicks; "
                  f"training + export {train_s:.0f} s", flush=True)  # fmt: skip
            results[name] = profile(out, history, test)
            results[name].update(history_clicks=len(history), test_clicks=len(test))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), 1 thread",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": version("numpy"),
        },
        "settings": {"scale": args.scale, "seed": args.seed, "days": 6, "test_days": 1},
        "profiles": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
