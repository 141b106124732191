"""Hyperparameter search for GRU4Rec with Optuna, on a time-based validation split of the
training data only (the test set is never read).

    python -m training tune --train data/demo/train.tsv --out runs/tune --trials 20 \\
        --loss cross-entropy --metric mrr@20 --param n_epochs=3
    python -m training train --train data/demo/train.tsv --config runs/tune/best.json ...

The search space is declared below (SPACES), one per loss, modelled on the reference's
paramspaces (hidasib/GRU4Rec_PyTorch_Official) with logq and n_sample added. Trials are
sampled by a seeded TPE sampler; after each epoch a trial reports its validation metric and
a median pruner stops trials that are behind the median of earlier trials at that epoch.
The study lives in an SQLite file, so an interrupted search resumes where it stopped; it
records the settings its values depend on (metric, base configuration, ranges, data sizes)
and a run with other settings is refused rather than mixed in. The base configuration
(--config/--param, the defaults otherwise) runs first (trial 0, or the first trial of a
resumed run if it never completed), so the best configuration is never worse on validation
than the one it started from. The search space is the base's loss's (--loss sets the loss
of a base that names none); a base of several GRU layers keeps its layers, since the space
holds one-layer sizes.

Ctrl-C stops the search after writing the results of the trials that completed; a run
that was killed leaves its trial running in the study file, and the next run (one process
runs a study at a time) marks it failed. The item vocabulary is the whole --train file's,
in its order, so the rows of a p-RNN features file made for that file fit the trials.

Writes to --out: best.json (a full config for `train --config`), trials.csv and
summary.json (metric, the base configuration's and the best value, trial counts).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ..config import Config, read_config_file
from ..data.logs import DAY, ITEM, SESSION, TIME, DataError, ItemVocab, Sessions, read_events


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


Param = IntRange | FloatRange | Choice

# The reference's "standard" spaces (steps included); logq and n_sample added as choices.
_COMMON: dict[str, Param] = {
    "layers": IntRange(64, 512, 32),  # one GRU layer of this size
    "batch_size": IntRange(32, 256, 16),
    "learning_rate": FloatRange(0.01, 0.25, 0.005),
    "dropout_p_embed": FloatRange(0.0, 0.5, 0.05),
    "dropout_p_hidden": FloatRange(0.0, 0.7, 0.05),
    "momentum": FloatRange(0.0, 0.9, 0.05),
    "sample_alpha": FloatRange(0.0, 1.0, 0.1),
    "n_sample": Choice((512, 1024, 2048)),
}
SPACES: dict[str, dict[str, Param]] = {
    "cross-entropy": {**_COMMON, "logq": Choice((0.0, 1.0))},
    "bpr-max": {
        **_COMMON,
        "bpreg": FloatRange(0.0, 2.0, 0.05),
        "elu_param": Choice((0.5, 1.0, 0.0)),
    },
}


@dataclass(frozen=True)
class TuneOptions:
    """`python -m training tune`; each field is the flag of the same name."""

    train: str
    out: str
    valid: str | None = None  # a validation file; else the last `valid_days` of `train`
    valid_days: float = 1.0
    study: str | None = None  # SQLite file; default OUT/study.db
    study_name: str = "gru4rec"
    loss: str | None = None  # the base's loss, for a base that names none; None: its own
    metric: str = "mrr@20"  # "mrr@K" or "recall@K", on the validation split
    trials: int = 20  # trials to run now (a resumed study adds this many)
    timeout: float | None = None  # seconds for this run; trials in flight finish
    config: str | None = None  # base config (file or preset); trial 0 runs it unchanged
    params: tuple[str, ...] = ()  # NAME=VALUE on top of the base; these are not searched
    ranges: tuple[str, ...] = ()  # NAME=LOW:HIGH narrows a declared range
    seed: int = 0  # of the TPE sampler
    prune_startup_trials: int = 3  # finished trials before pruning starts
    prune_warmup_epochs: int = 1  # epochs a trial always gets
    progress: bool = True
    columns: tuple[str, ...] = ()  # the logs' column names (session, item, time, user)


def validation_split(
    events: pd.DataFrame, days: float, min_length: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions that start after the cut (`days` before the last click) are the validation
    set, sessions that end before it the training set; the few that straddle it are left
    out, so no validation click precedes a training click. Validation clicks on items the
    training part lacks are dropped, then validation sessions left shorter than min_length."""
    times = events.groupby(SESSION)[TIME].agg(["min", "max"])
    cut = times["max"].max() - days * DAY
    train = events[events[SESSION].isin(times.index[times["max"] <= cut])]
    valid = events[events[SESSION].isin(times.index[times["min"] > cut])]
    valid = valid[valid[ITEM].isin(train[ITEM].unique())]
    valid = valid[valid.groupby(SESSION)[SESSION].transform("size") >= min_length]
    if train.empty or valid.empty:
        raise DataError(
            f"holding out the last {days} day(s) left an empty "
            f"{'training' if train.empty else 'validation'} part; change --valid-days or "
            "give --valid FILE"
        )
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def parse_metric(metric: str) -> tuple[str, int]:
    name, _, k = metric.partition("@")
    if name not in ("mrr", "recall") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"--metric {metric!r} must look like mrr@20 or recall@20")
    return name, int(k)


def base_config(options: TuneOptions) -> Config:
    """--config and --param on the defaults, with --loss as the loss when neither names one.
    Raises ValueError when --loss contradicts the loss they name: trial 0 would not be the
    base, nor the search space its loss's."""
    base = Config.from_sources(options.config, list(options.params))
    if options.loss is None or options.loss == base.loss:
        return base
    named = read_config_file(options.config) if options.config else {}
    if "loss" in named or any(p.partition("=")[0].strip() == "loss" for p in options.params):
        raise ValueError(
            f"--loss {options.loss} contradicts the base configuration's loss={base.loss}; "
            "leave --loss out (the search follows the base's loss) or change the base"
        )
    return replace(base, loss=options.loss)


def narrowed_space(loss: str, ranges: tuple[str, ...], fixed: set[str]) -> dict[str, Param]:
    """The declared space for `loss`, minus the fixed parameters, with NAME=LOW:HIGH applied."""
    if loss not in SPACES:
        raise ValueError(
            f"no search space for loss={loss!r}; give a base with one of {', '.join(SPACES)}"
        )
    space = {name: p for name, p in SPACES[loss].items() if name not in fixed}
    for item in ranges:
        name, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        if name in fixed:
            raise ValueError(
                f"--range {item!r}: {name} is fixed (by --param, or layers by a base of "
                "several layers), not searched; drop one of the two"
            )
        param = space.get(name)
        if not isinstance(param, IntRange | FloatRange) or not high:
            raise ValueError(
                f"--range {item!r}: give NAME=LOW:HIGH for a searched numeric parameter "
                f"({', '.join(n for n, p in space.items() if not isinstance(p, Choice))})"
            )
        if isinstance(param, IntRange):
            space[name] = replace(param, low=int(low), high=int(high))
        else:
            space[name] = replace(param, low=float(low), high=float(high))
    return space


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, IntRange):
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step)
        elif isinstance(p, FloatRange):
            value = trial.suggest_float(name, p.low, p.high, step=p.step)
            values[name] = round(value, 6)  # 0.30000000000000004 -> 0.3 in the config file
        else:
            values[name] = trial.suggest_categorical(name, list(p.values))
    return values


def _config_values(cfg: Config) -> dict[str, Any]:
    values = cfg.to_dict()
    values["layers"] = values["layers"][0] if len(values["layers"]) == 1 else values["layers"]
    return values


@dataclass
class _Data:
    train: Sessions
    valid: Sessions
    n_items: int
    vocab: ItemVocab


def load_data(options: TuneOptions) -> _Data:
    events = read_events(options.train, *options.columns)
    if options.valid:
        train_df, valid_df = events, read_events(options.valid, *options.columns)
    else:
        train_df, valid_df = validation_split(events, options.valid_days)
    # the whole file's items in its order, as `train` and the features tool index them: a
    # p-RNN features file lines up only so (items of the held-out days get no clicks)
    vocab = ItemVocab.from_events(events)
    train = Sessions.from_events(train_df, vocab, source=options.train)
    valid = Sessions.from_events(valid_df, vocab, "drop", options.valid or "validation split")
    return _Data(train, valid, len(vocab), vocab)


@dataclass
class _Objective:
    data: _Data
    base: Config
    space: dict[str, Param]
    metric: str
    cutoff: int
    values_seen: list[float] = field(default_factory=list)

    def __call__(self, trial: optuna.Trial) -> float:
        from ..evaluate import GRUScorer, evaluate
        from ..fit.train import fit

        cfg = Config.from_dict({**_config_values(self.base), **suggest(trial, self.space)})

        def on_epoch(stats, model) -> None:
            result = evaluate(GRUScorer(model), self.data.valid, cutoffs=(self.cutoff,))
            value = result[self.metric]
            trial.set_user_attr(f"epoch_{stats.epoch}", value)
            trial.report(value, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric}={value:.4f} after epoch {stats.epoch}")

        try:
            _, history = fit(self.data.train, self.data.n_items, cfg, False, on_epoch=on_epoch)
        except FloatingPointError as err:  # diverged: as hopeless as it gets
            trial.set_user_attr("error", str(err))
            raise optuna.TrialPruned(str(err)) from None
        value = trial.user_attrs[f"epoch_{history.epochs[-1].epoch}"]
        return float(value)


def run_study(options: TuneOptions) -> dict[str, Any]:
    """Run (or resume) the study and write best.json, trials.csv and summary.json."""
    name, cutoff = parse_metric(options.metric)
    fixed = {p.partition("=")[0].strip() for p in options.params}
    base = base_config(options)
    if len(base.layers) > 1 and "layers" not in fixed:
        fixed.add("layers")
        print(
            f"layers stay {'/'.join(map(str, base.layers))}: the search space holds one-layer "
            "sizes; a one-layer base has them searched"
        )
    space = narrowed_space(base.loss, options.ranges, fixed)
    start = {k: v for k, v in _config_values(base).items() if k in space}
    for key, param in space.items():  # Optuna refuses a categorical value off its list
        if isinstance(param, Choice) and start[key] not in param.values:
            space[key] = Choice((*param.values, start[key]))
    data = load_data(options)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _HideInterrupted) for f in optimize_log.filters):
        optimize_log.addFilter(_HideInterrupted())
    study = optuna.create_study(
        study_name=options.study_name,
        storage=f"sqlite:///{options.study or out / 'study.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=options.seed + len(_trials_so_far(options))),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=options.prune_startup_trials,
            n_warmup_steps=options.prune_warmup_epochs,
        ),
    )
    where = f"the study {options.study_name!r} in {options.study or out / 'study.db'}"
    check_settings(study, study_settings(f"{name}@{cutoff}", base, space, data), where)
    _fail_stale_trials(study)  # before the base check: a killed base must run again
    # The base first, as the yardstick; again on resume when a run stopped before it completed.
    done_or_queued = [t for t in study.trials if t.state.name in ("COMPLETE", "WAITING")]
    if not any(_params(t) == start for t in done_or_queued):
        study.enqueue_trial(start)
    objective = _Objective(data, base, space, f"{name}@{cutoff}", cutoff)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Fixed parameter")  # base may be off-grid
            study.optimize(
                objective,
                n_trials=options.trials,
                timeout=options.timeout,
                show_progress_bar=options.progress,
                callbacks=[_print_trial] if options.progress else [],
            )
    except KeyboardInterrupt:
        _fail_stale_trials(study, quiet=True)  # Ctrl-C between two trials leaves one running
        done = any(t.state.name == "COMPLETE" for t in study.trials)
        summary = write_results(study, base, start, out, options.metric) if done else None
        raise Interrupted(summary) from None
    return write_results(study, base, start, out, options.metric)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the search; `summary` is write_results' for the trials that completed,
    None when none had."""

    def __init__(self, summary: dict[str, Any] | None):
        super().__init__()
        self.summary = summary


class _HideInterrupted(logging.Filter):
    """Optuna logs a trial that Ctrl-C stopped as failed, in two warnings, the first with
    the traceback; the command says "interrupted" instead."""

    dropped = False

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        second = self.dropped and "failed with value" in record.getMessage()
        self.dropped = interrupted
        return not (interrupted or second)


def _fail_stale_trials(study: optuna.Study, quiet: bool = False) -> None:
    """Mark RUNNING trials failed: one process runs a study at a time, so they were left by
    a run that was killed (or stopped between two trials) and will never finish; counted
    as running they would stay in the summary forever."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if not quiet:
            print(f"trial {trial.number} was left running by a run that stopped; marked failed")


# Where a trial runs, not what it learns: these may change between runs of one study.
_RUNTIME = ("device", "threads", "cuda_graph")


def study_settings(metric: str, base: Config, space: dict[str, Param], data: _Data) -> dict:
    """What a study's values depend on, as JSON values: the metric, the base configuration
    (trial 0, and what the other trials vary), the searched ranges and the data sizes."""

    def span(p: Param) -> str:
        return "/".join(map(str, p.values)) if isinstance(p, Choice) else f"{p.low}:{p.high}"

    settings = {
        "metric": metric,
        "base": {k: v for k, v in _config_values(base).items() if k not in _RUNTIME},
        "space": {name: span(p) for name, p in space.items()},
        "data": f"{data.n_items} items, {data.train.n_events} training and "
        f"{data.valid.n_events} validation clicks",
    }
    return json.loads(json.dumps(settings))  # tuples as lists, as the study returns them


def check_settings(study: optuna.Study, settings: dict[str, Any], where: str) -> None:
    """Record `settings` in a new study's user attributes; raise ValueError, saying what
    differs, when resuming a study made under other settings: its trials would mix with this
    run's (values of two metrics maximised together, a new base that never runs)."""
    if not study.user_attrs:  # a new study (or one from before they were kept) takes these
        for key, value in settings.items():
            study.set_user_attr(key, value)
        return
    diffs = []
    for key, now in settings.items():
        was = study.user_attrs.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            label = "" if key == "base" else f"{key} "
            diffs += [
                f"{label}{k} {was.get(k, 'none')} (now {now.get(k, 'none')})"
                for k in [*was, *(k for k in now if k not in was)]
                if was.get(k) != now.get(k)
            ]
        elif was != now:
            diffs.append(f"{key} {was} (now {now})")
    if diffs:
        raise ValueError(
            f"{where} was made with other settings: {'; '.join(diffs)}; start a new study "
            "(another --out, --study or --study-name) or rerun with the study's settings"
        )


def _params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was enqueued with (also while it waits), else its own."""
    return trial.system_attrs.get("fixed_params", trial.params)


def _trials_so_far(options: TuneOptions) -> list:
    """Trials already in the study file (none for a new one): a resumed study's sampler
    gets a new seed, so it does not repeat the first run's proposals."""
    path = Path(options.study or Path(options.out) / "study.db")
    if not path.exists():
        return []
    try:
        study = optuna.load_study(study_name=options.study_name, storage=f"sqlite:///{path}")
    except KeyError:
        return []
    return study.trials


def _print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    from tqdm.auto import tqdm

    state = trial.state.name.lower()
    value = "" if trial.value is None else f" {trial.value:.4f}"
    best = _best_value(study)
    tqdm.write(f"trial {trial.number}: {state}{value} (best {best:.4f}) {trial.params}")


def _best_value(study: optuna.Study) -> float:
    done = [t.value for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    return max(done) if done else float("nan")


def write_results(
    study: optuna.Study, base: Config, start: dict[str, Any], out: Path, metric: str
) -> dict[str, Any]:
    """`start` is the base configuration's searched parameters: the first complete trial of
    them gives the base value (trial 0, unless a run stopped before it completed)."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise RuntimeError(
            "no trial finished; give more --trials or a longer --timeout, or check the data"
        )
    best = max(complete, key=lambda t: float(t.value or 0.0))  # complete trials have a value
    tuned = {k: round(v, 6) if isinstance(v, float) else v for k, v in best.params.items()}
    cfg = Config.from_dict({**_config_values(base), **tuned})
    (out / "best.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    base_trial = next((t for t in complete if _params(t) == start), None)
    states = [t.state.name for t in study.trials]
    summary = {
        "metric": metric,
        "base_value": None if base_trial is None else base_trial.value,
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": tuned,
        "trials": sum(s in ("COMPLETE", "PRUNED", "FAIL") for s in states),  # finished
        "complete": len(complete),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        # per trial, None when pruned or failed (Optuna keeps a pruned trial's last report)
        "curve": [t.value if t.state.name == "COMPLETE" else None for t in study.trials],
        "running_best": _running_best(study.trials),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _running_best(trials: list) -> list[float | None]:
    best, out = -np.inf, []
    for t in trials:
        if t.state.name == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
        out.append(None if best == -np.inf else float(best))
    return out
