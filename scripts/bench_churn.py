"""The service's blend of GRU4Rec and the online layer, replayed on a changing catalogue and
on the stable demo data; with --sweep, the grid of blend settings behind BlendConfig.

    .venv/bin/python scripts/bench_churn.py            # both tables (about 3 min, 2 cores)
    .venv/bin/python scripts/bench_churn.py --sweep    # and the sweep (about 6 min in all)
    .venv/bin/python scripts/bench_churn.py --no-hourly --sessions 10000    # quick

Churn: training.data.synthetic with training.data.churn (items released all day, interest fading
within hours) over --days days. Sessions are split by the day they start in: the last day is
the test, the days before it the history. GRU4Rec is trained on the history (GRU4Rec
preprocessing) and exported; then service.tools.replay walks the test day, every next click
counted, items the model cannot know included, for: the frozen model (online layer off),
the online layer alone, the blend, and an hourly update: before each hour of the test day
the model is the previous one continued on the previous hour's clicks (training.fit.update)
and re-exported, and a new Recommender takes over with the same OnlineLayer, as the
server's hot reload does. Stable: data/demo's train/test with runs/demo-export, frozen
model against the blend. Seconds: the replay, and update + export for the hourly variant.

The sweep records each call's two proposals once (the model's top candidates with logits,
the online layer's with scores) and re-blends them with service.pipeline.blend.blend for every
setting, which gives what a replay with that setting would give (checked for the defaults).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import ServiceConfig  # noqa: E402
from service.pipeline.blend import BlendConfig, OnlineLayer, Ranked, blend  # noqa: E402
from service.pipeline.decode import Limits  # noqa: E402
from service.pipeline.recommender import SOURCE_MODEL, Recommender  # noqa: E402
from service.pipeline.sessions import SessionCache  # noqa: E402
from service.proto import recommender_pb2 as pb  # noqa: E402
from service.runtime import ExportedModel  # noqa: E402
from service.server import make_online_layer  # noqa: E402
from service.tools.replay import Click, read_clicks, replay, walk  # noqa: E402
from training.config import Config  # noqa: E402
from training.data.churn import Churn  # noqa: E402
from training.data.logs import ItemVocab, Sessions, item_popularity, preprocess  # noqa: E402
from training.data.synthetic import DAY, HOUR, START_TIME, generate  # noqa: E402
from training.export import export_model  # noqa: E402
from training.fit.train import fit, save_model  # noqa: E402
from training.fit.update import UpdateOptions, save_update, update  # noqa: E402

K = 20
MAX_CLICKS = Limits().max_clicks  # what a request may carry, as the server's default
RECORDED = 150  # candidates a side recorded for the sweep: the server's popular list covers
# the default 100 plus 50 exclusions, so up to 150 is what it serves fast
ROOT = Path(__file__).resolve().parents[1]
# the synthetic_demo preset, shortened: 3 epochs and a small negative store keep training
# near a minute on 2 cores
SETTINGS = ["n_epochs=3", "sample_store_size=200000", "threads=1"]
# one gentle pass over an hour's clicks: more drifts the model off the items it knew (blend
# with model_weight 0.5, seed 1: 2 epochs at the parent's learning rate 0.1 gave Recall@20
# 0.643, 1 at 0.05 0.651, 1 at 0.02 0.655; the model trained once, 0.661)
UPDATE_PARAMS = ["n_epochs=1", "learning_rate=0.02"]
# an item first seen in the hour joins the model with 2 clicks there, not the 5 of a first
# training: an hour is short, and the online layer covers an item until then
UPDATE_OPTIONS = UpdateOptions(min_item_support=2)


# --- data ---


def churn_split(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(all clicks, history, test): sessions starting on the last day are the test."""
    churn = Churn()  # its defaults: a quarter to a third of a day's next clicks on new items
    clicks = generate(args.items, args.sessions, days=args.days, seed=args.seed, churn=churn).events
    start = clicks.groupby("SessionId")["Time"].transform("min")
    is_test = (start >= START_TIME + (args.days - 1) * DAY).to_numpy()
    return clicks, clicks[~is_test], clicks[is_test]


def to_clicks(frame: pd.DataFrame) -> list[Click]:
    """Clicks in time order, a session's clicks in file order among equal times."""
    ordered = frame.sort_values("Time", kind="stable")
    rows = zip(ordered.SessionId, ordered.ItemId, ordered.Time, strict=True)
    return [Click(str(s), str(i), float(t)) for s, i, t in rows]


def target_shares(test: pd.DataFrame, known: set[str], history: pd.DataFrame) -> tuple[float, ...]:
    """Shares of the test's next clicks (all clicks but a session's first) on items the
    model does not know, and on items first clicked on the test day."""
    targets = test[test.groupby("SessionId").cumcount() > 0].ItemId
    unknown = float((~targets.isin(known)).mean())
    return unknown, float((~targets.isin(set(history.ItemId))).mean())


# --- models ---


def train_export(history: pd.DataFrame, model_dir: Path, export_dir: Path) -> float:
    """Train GRU4Rec on the preprocessed history, save and export it; seconds."""
    started = time.perf_counter()
    cfg = Config.from_sources("synthetic_demo", SETTINGS)
    clicks = preprocess(history)
    vocab = ItemVocab.from_events(clicks)
    train = Sessions.from_events(clicks, vocab)
    model, _ = fit(train, len(vocab), cfg, progress=False)
    save_model(model_dir, model, cfg, vocab, item_popularity(train, len(vocab)), {})
    export_model(model_dir, export_dir)
    return time.perf_counter() - started


def hourly_exports(
    events: pd.DataFrame, base: Path, start: float, hours: int, root: Path
) -> tuple[list[tuple[float, Path]], float]:
    """[(from time, export dir)] of the models serving each hour of the test day: the base
    model, then each continued on the hour before's clicks; and the update + export seconds."""
    exports = [(start, base / "export")]
    parent, seconds = base, 0.0
    for h in range(1, hours):
        lo, hi = start + (h - 1) * HOUR, start + h * HOUR
        hour = events[(events.Time >= lo) & (events.Time < hi)]
        started = time.perf_counter()
        out = root / f"hour-{h:02d}"
        updated = update(parent, hour, UPDATE_PARAMS, UPDATE_OPTIONS, source=f"hour {h - 1}")
        save_update(out, updated)
        export_model(out, out / "export")
        seconds += time.perf_counter() - started
        exports.append((hi, out / "export"))
        parent = out
    return exports, seconds


# --- replays ---


def figures(ranks: np.ndarray) -> tuple[float, float]:
    """(Recall@K, MRR@K) of ranks."""
    hit = ranks <= K
    return float(hit.mean()), float(np.where(hit, 1.0 / ranks, 0.0).mean())


def server_layer(candidates: int | None = None) -> OnlineLayer:
    """A fresh online layer as the server makes it with its default settings; with another
    candidate count when given (up to the server's, whose popularity list it fits)."""
    layer = make_online_layer(ServiceConfig(model_dir=Path(".")))
    assert layer is not None
    if candidates is not None:
        layer.config = replace(layer.config, candidates=candidates)
    return layer


def engine_for(export_dir: Path, layer: OnlineLayer | None, use_model: bool = True) -> Recommender:
    """What server._build_engine makes of an export (CPU, one thread), sharing `layer`."""
    model = ExportedModel.load(export_dir, "cpu", threads=1)
    cache = SessionCache(1_000_000, 10 * DAY)  # replay time is not the wall clock
    return Recommender(model, cache, Limits(), online=layer, use_model=use_model)


def current(engines: list[tuple[float, Recommender]], now: float) -> Recommender:
    """The engine serving at `now`: the last to have started (the first serves before)."""
    serving = engines[0][1]
    for start, engine in engines[1:]:
        if start > now:
            break
        serving = engine
    return serving


def replay_swapping(
    exports: list[tuple[float, Path]], history: Sequence[Click], test: Sequence[Click]
) -> tuple[float, float, float]:
    """The test replayed while the model changes at the given times (one OnlineLayer
    throughout, as the server's reload keeps it); (Recall@K, MRR@K, seconds)."""
    started = time.perf_counter()
    layer = server_layer()
    engines = [(t, engine_for(path, layer)) for t, path in exports]

    def answer(session: str, clicks: list[str], t: float, k: int) -> list[str]:
        engine = current(engines, t)
        request = pb.RecommendRequest(session_id=session, clicks=clicks, top_k=k)
        return engine.recommend_now(engine.decode(request), now=t).item_ids

    out = walk(history, test, layer.learn, answer, (K,), MAX_CLICKS)
    return out[f"recall@{K}"], out[f"mrr@{K}"], time.perf_counter() - started


def run_replay(
    export_dir: Path,
    history: Sequence[Click],
    test: Sequence[Click],
    online: bool = True,
    use_model: bool = True,
) -> tuple[float, float, float]:
    """service.tools.replay.replay of one engine: (Recall@K, MRR@K, seconds)."""
    engine = engine_for(export_dir, server_layer() if online else None, use_model)
    result = replay(engine, history, test, (K,))
    return result[f"recall@{K}"], result[f"mrr@{K}"], result["seconds"]


# --- the sweep: each call's two proposals, re-blended ---


Recorded = tuple[list["Call"], list[tuple[int, str]]]  # calls, (call index, its target)


@dataclass
class Call:
    model: Ranked | None  # None: no click known to the model (the online answer alone)
    online: Ranked
    stale: bool  # the last click is unknown to the model
    fallback: list[str]  # training popularity, for a call neither side can answer


def record(
    exports: list[tuple[float, Path]], history: Sequence[Click], test: Sequence[Click], n: int
) -> Recorded:
    """Each test call's two proposals (n candidates a side), the model changing at the
    given times as in replay_swapping, and for each next click the call that predicted it."""
    frozen = [(t, engine_for(path, None)) for t, path in exports]
    layer = server_layer(candidates=n)
    calls: list[Call] = []
    targets: list[tuple[int, str]] = []
    last_call: dict[str, int] = {}

    def answer(session: str, clicks: list[str], t: float, k: int) -> list[str]:
        if session in last_call:
            targets.append((last_call[session], clicks[-1]))
        last_call[session] = len(calls)
        layer.learn(session, clicks, t)  # as Recommender.recommend_now does
        engine = current(frozen, t)
        query = engine.decode(pb.RecommendRequest(session_id=session, clicks=clicks, top_k=n))
        result = engine.recommend_now(query, now=t)
        ranked = None
        if result.source == SOURCE_MODEL:
            ranked = Ranked(result.item_ids, np.asarray(result.scores, np.float32))
        stale = bool(query.unknown) and clicks[-1] not in engine.model.index
        calls.append(Call(ranked, layer.propose(clicks, t, ()), stale, result.item_ids))
        return []

    walk(history, test, layer.learn, answer, (K,), MAX_CLICKS)  # only the calls are kept
    return calls, targets


def reblend(recorded: Recorded, config: BlendConfig) -> tuple[float, float]:
    """(Recall@K, MRR@K) of the blend with `config` over recorded calls, answered as
    Recommender.finish and .popularity would."""
    n = config.candidates
    answers = []
    for call in recorded[0]:
        online = Ranked(call.online.ids[:n], call.online.scores[:n])
        if call.model is None:
            answers.append(online.ids[:K] if online.ids else call.fallback[:K])
            continue
        weight = config.model_weight * (config.stale_factor if call.stale else 1.0)
        model = Ranked(call.model.ids[:n], call.model.scores[:n])
        answers.append(blend(model, online, K, weight)[0])
    ranks = [answers[i].index(t) + 1 if t in answers[i] else np.inf for i, t in recorded[1]]
    return figures(np.asarray(ranks, dtype=np.float64))


def sweep(recorded: dict[str, Recorded], stable_frozen: tuple[float, float]) -> None:
    """model_weight x stale_factor at the default candidates, then other candidate counts
    at the default weights. A setting passes when the stable data's blend is within 1%
    (relative) of the frozen model on both Recall@K and MRR@K."""
    d = BlendConfig()
    grid = [
        replace(d, model_weight=w, stale_factor=f)
        for w, f in itertools.product((0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9), (0.25, 0.5, 1.0))
    ] + [replace(d, candidates=n) for n in (50, RECORDED) if n != d.candidates]
    header = " | ".join(f"{name} R@{K} | {name} MRR@{K}" for name in recorded)
    print(f"\n| model_weight | stale_factor | candidates | {header} | stable within 1% |")
    print("|---" * (4 + 2 * len(recorded)) + "|")
    floor = 0.99 * np.asarray(stable_frozen)
    for config in grid:
        got = {name: reblend(calls, config) for name, calls in recorded.items()}
        ok = bool(np.all(np.asarray(got["stable"]) >= floor))
        cells = " | ".join(f"{r:.4f} | {m:.4f}" for r, m in got.values())
        print(
            f"| {config.model_weight} | {config.stale_factor} | {config.candidates} | {cells} "
            f"| {'yes' if ok else 'no'} |",
            flush=True,
        )


# --- per-call cost ---


def blend_cost(n: int = 100, calls: int = 2000, rounds: int = 7) -> float:
    """CPU microseconds per blend() call of n model + n online candidates, half of them
    shared: the best of `rounds` (other processes only ever add)."""
    rng = np.random.default_rng(0)
    logits = np.sort(rng.normal(size=n))[::-1].astype(np.float32)
    model = Ranked([f"i{j:05d}" for j in range(n)], logits)
    online_scores = np.sort(rng.random(n) / n)[::-1].astype(np.float32)
    online = Ranked([f"i{j:05d}" for j in range(0, 2 * n, 2)], online_scores)
    weight = BlendConfig().model_weight
    best = np.inf
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            blend(model, online, K, weight)
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


Row = tuple[str, float, float, str]  # variant, Recall@K, MRR@K, seconds as printed


def row(name: str, result: tuple[float, float, float]) -> Row:
    recall, mrr, seconds = result
    return name, recall, mrr, f"{seconds:.1f}"


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}\n\n| variant | Recall@{K} | MRR@{K} | seconds |\n|---|---|---|---|")
    for name, recall, mrr, seconds in rows:
        print(f"| {name} | {recall:.4f} | {mrr:.4f} | {seconds} |", flush=True)


def churn_rows(args: argparse.Namespace, root: Path) -> tuple[list[Row], dict[str, Recorded]]:
    """The churn table's rows; with --sweep also the recorded calls, by variant."""
    events, history_df, test_df = churn_split(args)
    history, test = to_clicks(history_df), to_clicks(test_df)
    base = root / "base"
    train_s = train_export(history_df, base, base / "export")
    known = set((base / "export" / "items.txt").read_text().split("\n"))
    unknown, new = target_shares(test_df, known, history_df)
    print(
        f"churn: {len(events):,} clicks over {args.days} days (seed {args.seed}); the test day "
        f"has {len(test):,} clicks in {test_df.SessionId.nunique():,} sessions; of its next "
        f"clicks {unknown:.1%} go to items the model cannot know, {new:.1%} to items first "
        f"seen that day; training + export took {train_s:.0f} s",
        flush=True,
    )
    rows = [
        row("frozen model", run_replay(base / "export", history, test, online=False)),
        row("online layer alone", run_replay(base / "export", history, test, use_model=False)),
        row("blend", run_replay(base / "export", history, test)),
    ]
    variants = {"churn": [(0.0, base / "export")]}
    if not args.no_hourly:
        start = START_TIME + (args.days - 1) * DAY
        hours = int(np.ceil((test_df.Time.max() - start) / HOUR))
        variants["hourly"], update_s = hourly_exports(events, base, start, hours, root)
        r, m, replay_s = replay_swapping(variants["hourly"], history, test)
        rows.append(("blend, hourly update", r, m, f"{replay_s:.1f} + {update_s:.1f} update"))
    recorded: dict[str, Recorded] = {}
    if args.sweep:
        recorded = {
            name: record(exports, history, test, RECORDED) for name, exports in variants.items()
        }
    return rows, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=7, help="the last is the test day")
    parser.add_argument("--items", type=int, default=2000, help="stock at the start")
    parser.add_argument("--sessions", type=int, default=30_000, help="over all the days")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-hourly", action="store_true", help="skip the hourly updates")
    parser.add_argument("--sweep", action="store_true", help="also the grid of blend settings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows, recorded = churn_rows(args, Path(tmp))
    print_table(f"Churn data; {BlendConfig()}", rows)
    demo, export = ROOT / "data" / "demo", ROOT / "runs" / "demo-export"
    history, test = read_clicks(demo / "train.tsv"), read_clicks(demo / "test.tsv")
    frozen = run_replay(export, history, test, online=False)
    stable = [row("frozen model", frozen), row("blend", run_replay(export, history, test))]
    print_table("Stable data (data/demo, runs/demo-export)", stable)
    print(f"\nblend() per call, 100 + 100 candidates: {blend_cost():.1f} us of CPU")
    if recorded:
        recorded["stable"] = record([(0.0, export)], history, test, RECORDED)
        for name, calls in recorded.items():  # the same as the replays above, or a bug
            r, m = reblend(calls, BlendConfig())
            print(f"re-blended defaults, {name}: {r:.4f} / {m:.4f}")
        sweep(recorded, frozen[:2])
    print(f"\n{platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
