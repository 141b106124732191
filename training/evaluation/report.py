"""A model report: one HTML file and PNG plots beside it, on where a GRU4Rec model wins
against the baselines and what its top-20 lists look like.

    python -m training report --model runs/demo --test data/demo/test.tsv --out docs/report \\
        [--train data/demo/train.tsv] [--tuning runs/tune-demo] [--extra-model runs/other]

Sections: metrics at several cut-offs for the model, any --extra-model and the baselines
(most-popular, item-KNN, V-SKNN, STAN, VSTAN) through training.evaluate's ranking (ties
against the model; an HRNN, row "hrnn", runs its users' test sessions after their training
sessions, as `evaluate --history` does with the training file); Recall@20 and MRR@20 by
test session length and by target popularity; the training curve from the model file's
history (and the search from `tune`'s summary); catalogue coverage, mean popularity
percentile and Gini index of the top-20 lists.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.batching import session_parallel
from ..data.logs import USER, DataError, Sessions

LENGTH_BUCKETS = ((2, 2), (3, 3), (4, 5), (6, 9), (10, 10**9))  # clicks in the test session
POPULARITY_BUCKETS = (  # share of the catalogue, most popular first
    ("top 1%", 0.0, 0.01),
    ("1-10%", 0.01, 0.10),
    ("10-50%", 0.10, 0.50),
    ("bottom 50%", 0.50, 1.0),
)


@dataclass(frozen=True)
class ReportOptions:
    """`python -m training report`; each field is the flag of the same name."""

    model: str
    test: str
    out: str
    train: str | None = None  # for the baselines; default: the file the model was trained on
    tuning: str | None = None  # a `tune` output directory (summary.json)
    knn_params: str | None = None  # JSON {"stan": {...}, "vstan": {...}}; else the defaults
    extra_models: tuple[str, ...] = ()  # other model directories, one row each
    cutoffs: tuple[int, ...] = (1, 5, 10, 20)
    top_k: int = 20  # length of the lists whose coverage and bias are measured
    progress: bool = True
    columns: tuple[str, ...] = ()  # the logs' column names (session, item, time, user)


@dataclass
class ModelRun:
    """What one pass over the test set gives: a rank per prediction (in session-parallel
    order) and how often each item was in a top-k list."""

    ranks: np.ndarray
    recommended: np.ndarray  # (n_items,) int64 appearances in top-k lists
    extra: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, np.ndarray] | None = None  # prediction_facts' in this order, if another


@dataclass
class WithHistory:
    """An HRNN row: scored over its users' test sessions after their sessions in `history`
    (the training clicks), user-parallel, as `evaluate --history` does."""

    model: nn.Module
    history: pd.DataFrame


def run_scorer(scorer: Any, test: Sessions, n_items: int, top_k: int, batch: int = 512):
    """Ranks as training.evaluate.collect_ranks computes them (same walk, same batch size),
    plus the top-k lists' item counts."""
    from ..data.batching import first_batch_size
    from ..evaluate import rank_of_target

    ranks, recommended = [], torch.zeros(n_items, dtype=torch.int64)
    scorer.start(first_batch_size(test.offsets, batch))
    for step in session_parallel(test.items, test.offsets, batch):
        scores = scorer.advance(step)
        ranks.append(rank_of_target(scores, step.targets.to(scores.device)).cpu().numpy())
        top = torch.topk(scores.float(), min(top_k, n_items), dim=1).indices.cpu()
        recommended += torch.bincount(top.flatten(), minlength=n_items)
    return ModelRun(np.concatenate(ranks), recommended.numpy())


def run_with_history(
    entry: WithHistory, test_events: pd.DataFrame, vocab: Any, top_k: int, batch: int = 512
) -> ModelRun:
    """Ranks as user_evaluate.evaluate_users computes them (same walk, same batch size), the
    top-k lists' item counts and each prediction's facts, in that walk's order."""
    from ..data.user_batching import UserSessions, user_parallel, with_history
    from ..evaluate import rank_of_target
    from .user_evaluate import scorer_for

    plan = UserSessions.from_events(with_history(test_events, entry.history), vocab, "drop")
    where = replace(plan, items=np.arange(len(plan.items)))  # the same walk over event indices
    scorer, n_items = scorer_for(entry.model), len(vocab)
    ranks, targets, recommended = [], [], torch.zeros(n_items, dtype=torch.int64)
    steps = zip(user_parallel(plan, batch), user_parallel(where, batch), strict=True)
    for i, (step, at) in enumerate(steps):
        if i == 0:
            scorer.start(len(step.inputs), plan.user_ids)
        scores = scorer.advance(step)  # the scored rows' only
        if step.scored.any():
            ranks.append(rank_of_target(scores, step.targets[step.scored].to(scores.device)))
            top = torch.topk(scores.float(), min(top_k, n_items), dim=1).indices.cpu()
            recommended += torch.bincount(top.flatten(), minlength=n_items)
            targets.append(at.targets[step.scored].numpy())
    target_event = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    lengths = np.repeat(np.diff(plan.offsets), np.diff(plan.offsets))
    facts = {"length": lengths[target_event], "target": plan.items[target_event]}
    ranked = torch.cat(ranks).cpu().numpy() if ranks else np.zeros(0)
    return ModelRun(ranked, recommended.numpy(), facts=facts)


def prediction_facts(test: Sessions, batch: int = 512) -> dict[str, np.ndarray]:
    """Per prediction, in the order run_scorer meets them: the test session's length and the
    target's event index (the same walk over event indices instead of items)."""
    events = np.arange(test.n_events, dtype=np.int64)
    targets = [s.targets.numpy() for s in session_parallel(events, test.offsets, batch)]
    target_event = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    lengths = np.repeat(np.diff(test.offsets), np.diff(test.offsets))
    return {"length": lengths[target_event], "target": test.items[target_event]}


def popularity_rank_share(popularity: np.ndarray) -> np.ndarray:
    """(n_items,) each item's place in the popularity order as a share of the catalogue:
    0 = the most clicked item, near 1 = the least."""
    order = np.argsort(-popularity, kind="stable")
    share = np.empty(len(popularity))
    share[order] = np.arange(len(popularity)) / len(popularity)
    return share


def gini(counts: np.ndarray) -> float:
    """Gini index of how recommendations spread over the catalogue: 0 = every item equally
    often, near 1 = always the same few."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def list_statistics(run: ModelRun, share: np.ndarray) -> dict[str, float]:
    total = run.recommended.sum()
    return {
        "coverage": float((run.recommended > 0).mean()),
        # 1 - share: 1 = the most popular item, 0 = the least; mean over all list entries
        "popularity_percentile": float((run.recommended * (1 - share)).sum() / max(total, 1)),
        "gini": gini(run.recommended),
    }


def bucket_metrics(
    ranks: np.ndarray, masks: dict[str, np.ndarray], k: int = 20
) -> dict[str, dict[str, float]]:
    from ..evaluate import metrics_from_ranks

    out = {}
    for label, mask in masks.items():
        m = metrics_from_ranks(ranks[mask], (k,))
        out[label] = {"recall": m[f"recall@{k}"], "mrr": m[f"mrr@{k}"], "n": int(mask.sum())}
    return out


def length_masks(lengths: np.ndarray) -> dict[str, np.ndarray]:
    return {
        (f"{lo}" if lo == hi else f"{lo}+" if hi > 1000 else f"{lo}-{hi}"): (lengths >= lo)
        & (lengths <= hi)
        for lo, hi in LENGTH_BUCKETS
    }


def popularity_masks(targets: np.ndarray, share: np.ndarray) -> dict[str, np.ndarray]:
    place = share[targets]
    return {label: (place >= lo) & (place < hi) for label, lo, hi in POPULARITY_BUCKETS}


def model_label(cfg: Any) -> str:
    """A model row's name: its architecture."""
    return {"id": "gru4rec", "hrnn": "hrnn"}.get(cfg.architecture, f"p-rnn {cfg.architecture}")


def build_scorers(options: ReportOptions, trained: Any) -> dict[str, Any]:
    """The model, any extra models and the baselines, all over the model's vocabulary; an
    HRNN as WithHistory (the training clicks)."""
    from ..data.logs import read_events
    from ..evaluate import GRUScorer
    from ..fit.train import load_model
    from .baselines import ItemKNN, MostPopular, SessionKNN
    from .knn import STAN_DEFAULTS, VSTAN_DEFAULTS, KNNParams, SequenceKNN, session_end_times

    train_path = options.train or trained.meta.get("train_file")
    if not train_path:
        raise ValueError("the model file does not name its training data; give --train FILE")
    events = read_events(train_path, *options.columns)

    def scorer(run: Any) -> Any:
        hrnn = run.config.architecture == "hrnn"
        return WithHistory(run.model, events) if hrnn else GRUScorer(run.model)

    n = len(trained.vocab)
    models = {model_label(trained.config): trained}
    seen = {Path(options.model).resolve()}
    for path in options.extra_models:
        if Path(path).resolve() in seen:
            raise ValueError(f"--extra-model {path} is --model or another --extra-model again")
        seen.add(Path(path).resolve())
        extra = load_model(path)
        if list(extra.vocab.ids) != list(trained.vocab.ids):
            raise ValueError(f"{path}: its item vocabulary differs from --model's; train both")
        # directories of the same name (runs/a/model, runs/b/model) get their whole path
        label = f"{model_label(extra.config)} ({Path(path).name})"
        if label in models:
            label = f"{model_label(extra.config)} ({Path(path).resolve()})"
        models[label] = extra
    scorers: dict[str, Any] = {label: scorer(model) for label, model in models.items()}
    train = Sessions.from_events(events, trained.vocab, "drop", str(train_path))
    knn = {"stan": STAN_DEFAULTS, "vstan": VSTAN_DEFAULTS}
    if options.knn_params:
        chosen = json.loads(Path(options.knn_params).read_text())
        knn |= {kind: KNNParams(**values) for kind, values in chosen.items()}
    ends = session_end_times(events, train)
    scorers |= {
        "most-popular": MostPopular.fit(train, n),
        "item-knn": ItemKNN.fit(train, n),
        "v-sknn": SessionKNN.fit(train, n),
        "stan": SequenceKNN(train, n, ends, knn["stan"]),
        "vstan": SequenceKNN(train, n, ends, knn["vstan"]),
    }
    return scorers


def make_report(options: ReportOptions) -> Path:
    """Evaluate, plot and write OUT/index.html; returns its path."""
    from tqdm.auto import tqdm

    from ..data.logs import read_events
    from ..evaluate import metrics_from_ranks
    from ..fit.train import load_model

    tuning = _read_tuning(options.tuning)  # a wrong path fails now, not after the work
    trained = load_model(options.model)
    n_items = len(trained.vocab)
    test_events = read_events(options.test, *options.columns)
    test = Sessions.from_events(test_events, trained.vocab, "drop", options.test)
    scorers = build_scorers(options, trained)
    hrnn = any(isinstance(s, WithHistory) for s in scorers.values())
    if hrnn and USER not in test_events.columns:
        raise DataError(
            f"{options.test}: no {USER} column; an HRNN is scored with its users' history "
            "(name the column with --user-key)"
        )
    facts = prediction_facts(test)
    share = popularity_rank_share(np.asarray(trained.popularity))
    results: dict[str, dict[str, Any]] = {}
    for name, scorer in tqdm(scorers.items(), desc="report", disable=not options.progress):
        if isinstance(scorer, WithHistory):
            run = run_with_history(scorer, test_events, trained.vocab, options.top_k)
        else:
            run = run_scorer(scorer, test, n_items, options.top_k)
        seen = run.facts or facts
        results[name] = {
            "metrics": metrics_from_ranks(run.ranks, options.cutoffs),
            "by_length": bucket_metrics(run.ranks, length_masks(seen["length"])),
            "by_popularity": bucket_metrics(run.ranks, popularity_masks(seen["target"], share)),
            "lists": list_statistics(run, share),
        }
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, trained.meta, tuning, out)
    page = _html(options, trained, results, tuning, plots, len(facts["length"]))
    (out / "index.html").write_text(page)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return out / "index.html"


def _read_tuning(directory: str | None) -> dict[str, Any] | None:
    if not directory:
        return None
    path = Path(directory) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; --tuning takes the --out of `training tune`")
    return json.loads(path.read_text())


def _plots(results, meta, tuning, out: Path) -> dict[str, str]:
    from . import report_plots

    plots = {
        "by_length": report_plots.bucket_bars(results, "by_length", "test session length", out),
        "by_popularity": report_plots.bucket_bars(
            results, "by_popularity", "target popularity (share of catalogue)", out
        ),
    }
    if meta.get("epochs"):
        plots["training"] = report_plots.training_curve(meta["epochs"], out)
    if tuning:
        plots["tuning"] = report_plots.tuning_curve(tuning, out)
    return plots


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(options, trained, results, tuning, plots, n_predictions) -> str:
    cut = options.cutoffs
    metric_rows = [
        [name] + [f"{r['metrics'][f'{m}@{k}']:.4f}" for k in cut for m in ("recall", "mrr")]
        for name, r in results.items()
    ]
    header = ["model"] + [f"{m}@{k}" for k in cut for m in ("Recall", "MRR")]
    list_rows = [
        [name, f"{r['lists']['coverage']:.3f}", f"{r['lists']['popularity_percentile']:.3f}"]
        + [f"{r['lists']['gini']:.3f}"]
        for name, r in results.items()
    ]
    sections = [
        f"<h1>Model report: {html.escape(options.model)}</h1>",
        f"<p>Test file {html.escape(options.test)}: {n_predictions:,} next-click predictions, "
        f"every item ranked, ties counted against the model. Config: "
        f"<code>{html.escape(json.dumps(_short_config(trained.config)))}</code></p>",
        '<h2 id="metrics">Metrics at several cut-offs</h2>',
        _table(header, metric_rows),
        '<h2 id="by-length">By session length</h2>',
        _bucket_table(results, "by_length"),
        f'<img src="{plots["by_length"]}" alt="metrics by session length">',
        '<h2 id="by-popularity">By target popularity</h2>',
        "<p>Buckets of the target's place in the training popularity order.</p>",
        _bucket_table(results, "by_popularity"),
        f'<img src="{plots["by_popularity"]}" alt="metrics by target popularity">',
        '<h2 id="training">Training curve</h2>',
        f'<img src="{plots["training"]}" alt="training loss per epoch">'
        if "training" in plots
        else "<p>The model file records no per-epoch history.</p>",
    ]
    if tuning:
        sections += [
            '<h2 id="tuning">Hyperparameter search</h2>',
            f"<p>{tuning['metric']} on the validation split: base configuration "
            f"{_fmt(tuning['base_value'])}, best {_fmt(tuning['best_value'])} (trial "
            f"{tuning['best_trial']} of {tuning['trials']}; {tuning['pruned']} pruned).</p>",
            f'<img src="{plots["tuning"]}" alt="validation metric per trial">',
        ]
    sections += [
        f'<h2 id="lists">Top-{options.top_k} lists: coverage and popularity bias</h2>',
        "<p>Coverage: share of the catalogue in at least one list. Popularity percentile: mean "
        "over list entries of the item's popularity percentile (1 = the most clicked). Gini: "
        "0 = every item recommended equally often, near 1 = always the same few.</p>",
        _table(["model", "coverage", "popularity percentile", "Gini"], list_rows),
    ]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:"
        "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Model report</title>'
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def _bucket_table(results, key: str) -> str:
    labels = list(next(iter(results.values()))[key])
    first = next(iter(results.values()))[key]
    header = ["model"] + [f"{label} (n={first[label]['n']:,})" for label in labels]
    rows = [
        [name] + [f"{r[key][b]['recall']:.3f} / {r[key][b]['mrr']:.3f}" for b in labels]
        for name, r in results.items()
    ]
    return "<p>Recall@20 / MRR@20 per bucket.</p>" + _table(header, rows)


def _short_config(cfg) -> dict[str, Any]:
    keys = ["loss", "layers", "batch_size", "learning_rate", "momentum", "dropout_p_embed"]
    keys += ["dropout_p_hidden", "n_sample", "sample_alpha", "logq", "bpreg", "n_epochs"]
    return {k: getattr(cfg, k) for k in keys}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
