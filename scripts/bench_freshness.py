"""Online baselines, the frozen model, the online layer and the shipped defaults, replayed on a
news-profile log, a shop-profile log and the stable demo data; writes
docs/results/freshness.json.

    .venv/bin/python scripts/bench_freshness.py           # all three (~12 min, 2 shared cores)
    .venv/bin/python scripts/bench_freshness.py --profiles stable    # quick (~1 min)
    .venv/bin/python scripts/bench_freshness.py --work /tmp/fresh   # keep data and models

Data: `python -m training generate --profile NAME`'s generator (training.data.profiles; 5 days of
history and a test day, every click kept) at --scale 0.5 (news: ~90,000 clicks a day; fewer
stories are live at a time than on the real log, so the top stories' shares and the youngest
ages drift a little from its statistics, more so below 0.5), and "stable": data/demo
(`python -m training generate`, the e-commerce-like data without churn where the frozen
GRU4Rec is strong; only the model, the online layer and the blends are replayed there).
Every test click is replayed (no subsample: the whole news test day takes about a minute per
method). GRU4Rec is trained on the history (GRU4Rec preprocessing, the synthetic_demo preset
shortened to 3 epochs) and exported. Every method is scored by service.tools.replay's walk:
the history learnt first, then every test click predicted and then learnt, every next click
counted (items the model cannot know included).
The service runs as a site that announces each item when it publishes it (its catalogue
holds every item of the log; clicks still go through the learning guard). Methods:
service.tools.online_baselines' four, the frozen model (online layer off), the online layer alone
(no model), the shipped defaults (the online ranker over the model and the online
statistics) and the previous default (the fixed mixture blend, --scorer mixture).

Checks, printed (and stored under "checks"): on news the baselines' order of the real log
(last-hour popularity < co-occurrence < decayed co-occurrence, the frozen model far below);
the shipped defaults above every baseline on news on Recall@20 and MRR@20; on shop and
stable within 1% of the frozen model (or above) on both. Seconds per call: the test walk's
time per click, the defaults against the model alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.pipeline.blend import BlendConfig  # noqa: E402
from service.tools.online_baselines import BASELINES  # noqa: E402
from service.tools.replay import (  # noqa: E402
    Click,
    build_engine,
    log_items,
    read_clicks,
    replay,
    replay_baseline,
)
from training.config import Config  # noqa: E402
from training.data.logs import ItemVocab, Sessions, item_popularity, preprocess, read_events  # noqa: E402
from training.data.profiles import PROFILES, profile_to_dir  # noqa: E402
from training.export import export_model  # noqa: E402
from training.fit.train import fit, save_model  # noqa: E402

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


STABLE = "stable"  # data/demo: no churn, the frozen model strong
STABLE_METHODS = ("frozen model", "online layer alone")  # besides the defaults and mixture
BASELINE_NAMES = {
    "last-hour-popularity": "last-hour popularity",
    "cooccurrence": "co-occurrence, then popularity",
    "decayed-cooccurrence": "decayed co-occurrence (1 h)",
    "session-knn": "session-KNN",
}
WITHIN = 0.01  # shop and stable: the defaults at most 1% below the frozen model


def data(work: Path, name: str, scale: float, seed: int) -> Path:
    """The profile's directory under work, generated (or copied from data/demo for
    "stable") unless already there."""
    out = work / name
    if not (out / "test.tsv").exists():
        out.mkdir(parents=True, exist_ok=True)
        if name == STABLE:
            for f in ("train.tsv", "test.tsv"):
                shutil.copy(ROOT / "data" / "demo" / f, out / f)
        else:
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
        "ms_per_call": round(1000 * figures["seconds_per_call"], 3),
    }
    print(f"| {method} | {out[f'recall@{K}']:.4f} | {out[f'mrr@{K}']:.4f} | {out['seconds']} "
          f"| {out['ms_per_call']} |", flush=True)  # fmt: skip
    return out


def profile(name: str, out: Path, history: list[Click], test: list[Click]) -> dict:
    """Every method's row on one profile, and the ranker's learnt weights and hit rates."""
    print(f"\n| method | Recall@{K} | MRR@{K} | seconds | ms per call |\n|---|---:|---:|---:|---:|")
    rows = []
    if name != STABLE:
        for key, make in BASELINES.items():
            rows.append(row(BASELINE_NAMES[key], replay_baseline(make(), history, test, (K,))))
    online: dict = {}
    items = log_items(history, test)
    for method, settings in ENGINES.items():
        engine = build_engine(out / "export", announce=items, **settings)
        figures = replay(engine, history, test, (K,))
        rows.append(row(method, figures))
        if method.startswith("shipped"):
            online = figures["online"]
    return {"rows": rows, "online": online, "checks": checks(name, rows)}


def checks(name: str, rows: list[dict]) -> dict[str, bool]:
    """The order and margins the module docstring lists, each printed PASS or FAIL."""
    r = {x["method"]: (x[f"recall@{K}"], x[f"mrr@{K}"]) for x in rows}
    defaults, frozen = r[next(m for m in r if m.startswith("shipped"))], r["frozen model"]
    out: dict[str, bool] = {}
    if name == "news":
        pop, co, dec = (r[BASELINE_NAMES[b]] for b in list(BASELINE_NAMES)[:3])
        out["baseline order (Recall@20): popularity < co-occurrence < decayed"] = (
            pop[0] < co[0] < dec[0]
        )
        out["frozen model far below the baselines (Recall@20, by 0.05+)"] = (
            frozen[0] < min(pop[0], co[0], dec[0]) - 0.05
        )
        best = [r[BASELINE_NAMES[b]] for b in BASELINE_NAMES]
        out["defaults above every baseline on Recall@20 and MRR@20"] = all(
            defaults[0] > b[0] and defaults[1] > b[1] for b in best
        )
    else:
        out["defaults within 1% of the frozen model (or above) on both"] = all(
            d >= (1 - WITHIN) * f for d, f in zip(defaults, frozen, strict=True)
        )
    for what, ok in out.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}: {what}")
    ms = {m: x["ms_per_call"] for x in rows for m in [x["method"]]}
    print(
        f"ms per call: defaults {ms[next(m for m in ms if m.startswith('shipped'))]}, "
        f"frozen model {ms['frozen model']}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [*PROFILES, STABLE]
    parser.add_argument("--profiles", nargs="+", choices=names, default=names)
    parser.add_argument("--scale", type=float, default=0.5, help="training.data.profiles' size")
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
            results[name] = profile(name, out, history, test)
            results[name].update(history_clicks=len(history), test_clicks=len(test))
    sys.path.insert(0, str(ROOT / "scripts"))
    from provenance import record

    settings = {"scale": args.scale, "seed": args.seed, "days": 6, "test_days": 1}
    report = record("freshness", {"settings": settings, "profiles": results})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
