"""Command line: python -m training COMMAND (see COMMAND --help for its options).

Commands: generate, split, train, tune, update, evaluate, baselines, report, export, parity.

python -m training generate --out data/demo [--churn --days 10 --new-items-per-day 300]
python -m training generate --profile news --out data/news [--days 6 --seed 0 --scale 1]
python -m training generate --profile news-readers --out data/news_readers   # with UserId
python -m training train --train data/demo/train.tsv --test data/demo/test.tsv --out runs/demo
python -m training tune --train data/demo/train.tsv --out runs/tune --trials 20
python -m training evaluate --model runs/demo --test data/demo/test.tsv --json metrics.json
python -m training.data.users --out data/u   # synthetic users (UserId column), then HRNN:
python -m training train --train data/u/train.tsv --out runs/hrnn --param architecture=hrnn
python -m training evaluate --model runs/hrnn --test data/u/test.tsv --history data/u/train.tsv
python -m training update --model runs/demo --train data/day6.tsv --out runs/demo-day6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data.logs import USER, DataError


def _add_columns(p: argparse.ArgumentParser, users: bool = True) -> None:
    p.add_argument("--session-key", default="SessionId", help="session id column")
    p.add_argument("--item-key", default="ItemId", help="item id column")
    p.add_argument("--time-key", default="Time", help="time column (Unix seconds)")
    if users:
        p.add_argument("--user-key", default="UserId", help="user id column, kept when present")


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (a batch of 0 never ends; a cutoff of 0 means nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _add_cutoffs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutoffs", type=_positive, nargs="+", default=[1, 5, 10, 20], help="k of @k")


def _columns(args: argparse.Namespace) -> tuple[str, str, str, str]:
    return args.session_key, args.item_key, args.time_key, args.user_key


def _read(path: str, args: argparse.Namespace):
    from .data.logs import read_events

    return read_events(path, *_columns(args))


def _user_plan(test, history, vocab, unknown, source, history_source="the history"):
    """The test users' sessions after their history (a frame or None; clicks on unknown
    items dropped), which builds their state first (HRNN). Raises DataError for a file
    without user ids: train builds it before training, so that fails first."""
    from .data.logs import ITEM
    from .data.user_batching import UserSessions, with_history

    if history is not None:
        history = history[history[ITEM].isin(vocab.index)]
    frame = with_history(test, history, source, history_source)
    return UserSessions.from_events(frame, vocab, unknown, source)


def _with_users(model, plan, cutoffs, batch=512, ties=None, progress=False):
    """evaluate_users' figures over a _user_plan; "returning" covers the targets of users
    who had an earlier session."""
    from .evaluation.user_evaluate import evaluate_users, scorer_for

    ties = ties or "conservative"
    return evaluate_users(scorer_for(model), plan, cutoffs, batch, ties, progress)


def _check_out(out: str) -> None:
    """Raises ValueError when --out cannot become a model directory (checked before work)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the model")


def _known(events, vocab, source: str):
    """The events; raises DataError when none is on an item of vocab (nothing to score)."""
    from .data.logs import ITEM

    if not events[ITEM].isin(vocab.index).any():
        raise DataError(
            f"{source}: none of its {len(events):,} clicks is on an item the model knows; "
            "is it a test file of the same data?"
        )
    return events


def cmd_generate(args: argparse.Namespace) -> None:
    from .data.churn import Churn, new_item_share
    from .data.logs import read_events
    from .data.synthetic import generate_to_dir

    if args.profile is not None:
        _generate_profile(args)
        return
    if args.scale is not None:
        raise ValueError("--scale goes with --profile")
    extra: dict = {} if args.days is None else {"days": args.days}
    if args.churn:
        defaults = Churn()
        extra["churn"] = Churn(
            new_items_per_day=_or(args.new_items_per_day, defaults.new_items_per_day),
            stock_share=_or(args.stock_share, defaults.stock_share),
            half_life_hours=_or(args.half_life_hours, defaults.half_life_hours),
        )
    paths = generate_to_dir(
        args.out,
        n_items=args.items,
        n_sessions=args.sessions,
        seed=args.seed,
        test_days=args.test_days,
        **extra,
    )
    print(f"wrote {args.out}/events.tsv, train.tsv, test.tsv")
    if args.churn:
        share = new_item_share(read_events(paths["events"]))
        print(f"last day: {share:.1%} of next clicks are on items first seen that day")


def _generate_profile(args: argparse.Namespace) -> None:
    from .data.logs import read_events
    from .data.profiles import profile_to_dir

    if args.churn or args.items is not None or args.sessions is not None:
        raise ValueError("--profile sets the sizes and churn itself; use --scale and --days")
    days = _or(args.days, 6.0)
    scale = _or(args.scale, 1.0)
    paths = profile_to_dir(args.out, args.profile, days, args.seed, scale, args.test_days)
    print(f"wrote {args.out}/events.tsv, items.tsv, train.tsv, test.tsv ({args.profile})")
    if args.profile in ("news", "news-readers"):
        train, test = read_events(paths["train"]), read_events(paths["test"])
        targets = test[test.groupby("SessionId").cumcount() > 0].ItemId
        unseen = float((~targets.isin(set(train.ItemId))).mean())
        print(f"test: {len(test):,} clicks; {unseen:.1%} of next clicks on items unseen before")


def _or(value, default):
    return default if value is None else value


def cmd_split(args: argparse.Namespace) -> None:
    from .data.logs import preprocess, split_by_time, write_events

    events = preprocess(_read(args.input, args), args.min_item_support, args.min_session_length)
    train, test = split_by_time(events, args.test_days, args.min_session_length)
    out = Path(args.out)
    write_events(train, out / "train.tsv")
    write_events(test, out / "test.tsv")
    print(
        f"train: {len(train):,} clicks, {train.SessionId.nunique():,} sessions, "
        f"{train.ItemId.nunique():,} items; test: {len(test):,} clicks, "
        f"{test.SessionId.nunique():,} sessions -> {out}"
    )


def _interruptible(command):
    """command, with Ctrl-C ending it in one line and exit status 130 (128 + SIGINT) instead
    of a traceback; a training stopped after an epoch has saved that epoch's model by then
    (_saved_on_ctrl_c)."""

    def run(args: argparse.Namespace) -> None:
        try:
            command(args)
        except KeyboardInterrupt:
            print("interrupted before an epoch completed: nothing saved", file=sys.stderr)
            sys.exit(130)

    run.__doc__ = command.__doc__
    return run


def _saved_on_ctrl_c(path: str, interrupted: dict) -> None:
    """Says where the model of the last completed epoch went (its meta's "interrupted": the
    epochs done and planned), and exits 130."""
    done, planned = interrupted["epochs_done"], interrupted["n_epochs"]
    print(f"interrupted: saved the model of epoch {done} of {planned} to {path}", file=sys.stderr)
    sys.exit(130)


@_interruptible
def cmd_train(args: argparse.Namespace) -> None:
    from .config import Config
    from .data.logs import ItemVocab, Sessions, item_popularity
    from .evaluate import GRUScorer, evaluate, format_table
    from .fit import distributed
    from .fit.train import Interrupted, fit, resolve_device, save_model

    cfg = Config.from_sources(args.config, args.param)
    _check_out(args.out)
    if cfg.n_epochs < 1:
        raise ValueError(f"n_epochs={cfg.n_epochs}: nothing would be trained; give 1 or more")
    resolve_device(cfg.device)  # a device that is not there fails now, not after the data
    rank = None
    if distributed.launched_by_torchrun():  # one process per rank; see training/fit/distributed.py
        if cfg.architecture == "hrnn":  # each rank would train on every user, alone
            raise ValueError(
                "architecture=hrnn trains in one process: its user-parallel batches are not "
                "shared out between ranks; run it without torchrun"
            )
        rank = distributed.init_from_env(resolve_device(cfg.device).type)
    events = _read(args.train, args)
    vocab = ItemVocab.from_events(events)
    train = Sessions.from_events(events, vocab, source=args.train)
    train.check_min_length(args.train)
    # the test file is read and checked before the training, not after it (a bad path or
    # a file of unknown items used to end a finished run with nothing saved)
    test_events = _known(_read(args.test, args), vocab, args.test) if args.test else None
    test_plan = None
    if cfg.architecture == "hrnn" and test_events is not None:  # its users, checked now too
        test_plan = _user_plan(test_events, events, vocab, "drop", args.test, args.train)
    if (Path(args.out) / "model.pt").exists():
        print(f"{args.out}/model.pt will be replaced when this training ends")
    print(f"{train.n_events:,} clicks, {train.n_sessions:,} sessions, {len(vocab):,} items")
    started = time.perf_counter()
    stopped = None  # Ctrl-C after an epoch: that epoch's model is saved, then exit 130
    try:
        if cfg.architecture == "hrnn":  # user-parallel batches over the users' sessions
            from .data.user_batching import UserSessions
            from .fit.hrnn_fit import fit_hrnn

            plan = UserSessions.from_events(events, vocab, source=args.train)
            model, history = fit_hrnn(plan, len(vocab), cfg, not args.quiet, interruptible=True)
        else:
            model, history = fit(train, len(vocab), cfg, not args.quiet, interruptible=True)
    except Interrupted as stop:
        if stop.model is None:
            raise
        model, history, stopped = stop.model, stop.history, stop
    if rank is not None and not rank.is_main:
        if stopped is not None:
            sys.exit(130)
        return  # the ranks' models are the same; rank 0 evaluates and writes it
    meta = {
        "train_file": str(Path(args.train).resolve()),  # report reads it from anywhere
        "train_clicks": train.n_events,
        "train_sessions": train.n_sessions,
        "train_seconds": round(time.perf_counter() - started, 2),
        "epochs": [
            {"epoch": e.epoch, "loss": e.loss, "events_per_s": round(e.events_per_second)}
            for e in history.epochs
        ],
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    evaluating = test_events is not None and stopped is None  # after a Ctrl-C: no time
    try:
        if evaluating and test_plan is not None:  # the training clicks are the users' history
            result = _with_users(model, test_plan, args.cutoffs)
            meta["evaluation"] = result
            print(format_table({"hrnn": result, "returning": result["returning"],
                                "returning, first click": result["returning_first"]},
                               args.cutoffs))  # fmt: skip
        elif evaluating:
            test = Sessions.from_events(test_events, vocab, "drop", args.test)
            meta["evaluation"] = evaluate(GRUScorer(model), test, cutoffs=args.cutoffs)
            print(format_table({"gru4rec": meta["evaluation"]}, args.cutoffs))
    except KeyboardInterrupt:  # every epoch is done: keep the model, unevaluated
        stopped = Interrupted(model, history, len(history.epochs))
    if stopped is not None:
        meta["interrupted"] = {"epochs_done": len(history.epochs), "n_epochs": stopped.n_epochs}
    popularity = item_popularity(train, len(vocab))
    save_model(args.out, model, cfg, vocab, popularity, meta, history.optimizer_state)
    if stopped is not None:
        _saved_on_ctrl_c(f"{args.out}/model.pt", meta["interrupted"])
    print(f"saved {args.out}/model.pt")


@_interruptible
def cmd_update(args: argparse.Namespace) -> None:
    from .data.logs import Sessions
    from .evaluate import GRUScorer, evaluate, format_table
    from .fit import distributed
    from .fit.train import Interrupted
    from .fit.update import UpdateOptions, save_update, update

    if distributed.launched_by_torchrun():  # each rank would run the whole update alone
        raise ValueError(
            "update runs in one process: it is not shared out between ranks, and every rank "
            "would write --out; run it without torchrun"
        )
    out = Path(args.out).resolve()
    if out == Path(args.model).resolve():
        raise ValueError("--out must differ from --model: the parent stays, so lineage holds")
    saved = Path(args.model) / "config.json"
    lineage = (
        json.loads(saved.read_text()).get("meta", {}).get("lineage", []) if saved.exists() else []
    )
    if any(Path(entry["path"]).resolve() == out for entry in lineage):
        raise ValueError(
            f"--out {args.out} holds an ancestor of --model: its lineage would no longer "
            "match; write the update somewhere new"
        )
    _check_out(args.out)
    options = UpdateOptions(args.min_item_support, args.min_session_length, args.new_rows)
    events = _read(args.train, args)
    # read before the update trains, not after it: a bad --test used to lose the update
    test_events = _read(args.test, args) if args.test else None

    def check(vocab, cfg) -> None:  # the updated vocabulary and config, before training
        if cfg.n_epochs < 1:
            raise ValueError(f"n_epochs={cfg.n_epochs}: nothing would be trained; give 1 or more")
        if test_events is not None:
            _known(test_events, vocab, args.test)
        if (Path(args.out) / "model.pt").exists():
            print(f"{args.out}/model.pt will be replaced when this update ends")

    try:
        updated = update(
            args.model, events, args.param, options, args.features, args.train,
            not args.quiet, check, interruptible=True,
        )  # fmt: skip
    except Interrupted as stop:
        if stop.result is None:
            raise
        save_update(args.out, stop.result)
        _saved_on_ctrl_c(f"{args.out}/model.pt", stop.result.meta["interrupted"])
    done = updated.meta["update"]
    print(
        f"{done['clicks_used']:,} of {done['clicks']:,} clicks used; {done['new_items']:,} new "
        f"items ({done['rare_new_items_left_out']:,} with fewer than {args.min_item_support} "
        f"clicks left out); {len(updated.vocab):,} items in all"
    )
    if test_events is not None:
        test = Sessions.from_events(test_events, updated.vocab, "drop", args.test)
        try:
            updated.meta["evaluation"] = evaluate(GRUScorer(updated.model), test, args.cutoffs)
            print(format_table({"updated": updated.meta["evaluation"]}, args.cutoffs))
        except KeyboardInterrupt:  # every epoch is done: keep the update, unevaluated
            epochs = len(updated.meta["epochs"])
            updated.meta["interrupted"] = {"epochs_done": epochs, "n_epochs": epochs}
    save_update(args.out, updated)
    if "interrupted" in updated.meta:
        _saved_on_ctrl_c(f"{args.out}/model.pt", updated.meta["interrupted"])
    print(f"saved {args.out}/model.pt (parent {updated.meta['parent']['path']})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data.logs import ITEM, Sessions
    from .evaluate import GRUScorer, evaluate, format_table
    from .fit.train import load_model

    trained = load_model(args.model, device=args.device)
    unknown = "drop" if args.drop_unknown else "error"
    events = _read(args.test, args)
    if args.drop_unknown:
        _known(events, trained.vocab, args.test)
        dropped = int((~events[ITEM].isin(trained.vocab.index)).sum())
        print(f"{dropped:,} of {len(events):,} test clicks dropped: the model does not know "
              "their items")  # fmt: skip
    hrnn = trained.config.architecture == "hrnn"
    if hrnn and not args.history:  # what its user state starts from, said, not assumed
        print(
            f"note: no --history: users' state comes only from their earlier sessions in "
            f"{args.test}; pass the training log with --history FILE to start from all of it"
            if USER in events.columns
            else f"note: {args.test} has no {USER} column: every session starts without a "
            "user state; name the user column with --user-key"
        )
    if args.history or (hrnn and USER in events.columns):
        history = _read(args.history, args) if args.history else None
        plan = _user_plan(events, history, trained.vocab, unknown, args.test, args.history)
        result = _with_users(
            trained.model, plan, args.cutoffs, args.batch_size, args.tie_mode, progress=True
        )
        print(format_table({args.model: result, "returning": result["returning"],
                            "returning, first click": result["returning_first"]},
                           args.cutoffs))  # fmt: skip
        print(f"{result['returning']['n_events']:,} predictions for returning users")
    else:
        test = Sessions.from_events(events, trained.vocab, unknown, args.test)
        if not args.drop_unknown:  # a session left with one click has nothing to predict
            test.check_min_length(args.test)
        result = evaluate(
            GRUScorer(trained.model), test, args.cutoffs, args.batch_size, args.tie_mode, True
        )
        print(format_table({args.model: result}, args.cutoffs))
    print(f"{result['n_events']:,} predictions, ties counted as: {args.tie_mode}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_baselines(args: argparse.Namespace) -> None:
    from .evaluation.baselines import compare_results, knn_json, results_table

    results, tuned = compare_results(args.train, args.test, args.cutoffs, None, args.tune_trials,
                                     args.valid_days, _columns(args), not args.quiet)  # fmt: skip
    if tuned:
        print("tuned STAN/VSTAN settings (save as a file for report --knn-params):")
        print(knn_json(tuned))
    print(results_table(results, args.cutoffs))
    n = next(iter(results.values()))["n_events"]  # the same test targets for every model
    print(f"{n:,} predictions (test clicks on items not in --train dropped), ties counted as: "
          "conservative")  # fmt: skip


def cmd_tune(args: argparse.Namespace) -> None:
    from .config import Config
    from .evaluation.tune import TuneOptions, run_study

    if Config.from_sources(args.config, args.param).n_epochs < 1:
        raise ValueError("n_epochs must be 1 or more: a trial of 0 epochs has nothing to score")
    options = TuneOptions(
        train=args.train,
        out=args.out,
        valid=args.valid,
        valid_days=args.valid_days,
        study=args.study,
        study_name=args.study_name,
        loss=args.loss,
        metric=args.metric,
        trials=args.trials,
        timeout=args.timeout,
        config=args.config,
        params=tuple(args.param),
        ranges=tuple(args.range),
        seed=args.seed,
        prune_startup_trials=args.prune_startup_trials,
        prune_warmup_epochs=args.prune_warmup_epochs,
        progress=not args.quiet,
        columns=_columns(args),
    )
    try:
        summary = run_study(options)
    except KeyboardInterrupt as stop:  # Ctrl-C: the completed trials' results are written
        if getattr(stop, "summary", None):
            print(_tune_line(stop.summary, args.out))
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(_tune_line(summary, args.out))


def _tune_line(summary: dict, out: str) -> str:
    return (
        f"{summary['metric']} on validation: base {summary['base_value']}, best "
        f"{summary['best_value']:.4f} (trial {summary['best_trial']}); {summary['trials']} "
        f"trials, {summary['pruned']} pruned, {summary['failed']} failed -> {out}/best.json, "
        "trials.csv, summary.json"
    )


def cmd_report(args: argparse.Namespace) -> None:
    from .evaluation.report import ReportOptions, make_report

    options = ReportOptions(
        model=args.model,
        test=args.test,
        out=args.out,
        train=args.train,
        tuning=args.tuning,
        knn_params=args.knn_params,
        extra_models=tuple(args.extra_model),
        cutoffs=tuple(args.cutoffs),
        top_k=args.top_k,
        progress=not args.quiet,
        columns=_columns(args),
    )
    print(f"wrote {make_report(options)}")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_model

    quantize = None if args.quantize == "none" else args.quantize
    path = export_model(
        args.model, args.out, opset=args.opset, quantize=quantize,
        check_clicks=args.check_clicks,
        check_columns=(args.session_key, args.item_key, args.time_key),
        progress=not args.quiet,
    )  # fmt: skip
    meta = json.loads((path / "metadata.json").read_text())
    layer = "float32" if meta["quantization"] is None else meta["quantization"]["output_layer"]
    choice = meta.get("output_layer_choice")
    print(f"exported {path}; output layer {layer}" + (f" ({choice['why']})" if choice else ""))


def cmd_parity(args: argparse.Namespace) -> None:
    from .export import check_parity

    report = check_parity(args.model, args.export, n_sessions=args.sessions, seed=args.seed)
    print(json.dumps(report, indent=2))
    if not report.get("ok", False):
        if report.get("quantization"):
            print(
                "note: this export's output layer is int8; its scores were held to the "
                "quantisation's error bound (export_quantize.score_error_bound) and missed it: "
                "export it again, or with --quantize none",
                file=sys.stderr,
            )
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a synthetic click log, split into train/test")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--items", type=int, default=None, help="catalogue size (with --churn: the stock)"
    )
    p.add_argument("--sessions", type=int, default=None)
    p.add_argument(
        "--profile",
        choices=["news", "news-readers", "shop"],
        default=None,
        help="a real log's shape (training/data/profiles.py); every test click kept",
    )
    p.add_argument("--scale", type=float, default=None, help="with --profile: size, 1 = full")
    p.add_argument(
        "--days", type=float, default=None, help="days of clicks (default 14; profiles: 6)"
    )
    p.add_argument("--test-days", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--churn", action="store_true", help="items appear every day and their interest decays"
    )
    p.add_argument("--new-items-per-day", type=float, default=None, help="with --churn")
    p.add_argument("--stock-share", type=float, default=None, help="with --churn")
    p.add_argument("--half-life-hours", type=float, default=None, help="with --churn: median")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("split", help="GRU4Rec preprocessing and time-based train/test split")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--test-days", type=float, default=1.0)
    p.add_argument("--min-item-support", type=int, default=5)
    p.add_argument("--min-session-length", type=int, default=2)
    _add_columns(p)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train GRU4Rec")
    p.add_argument("--train", required=True)
    p.add_argument("--test", help="evaluate on this file after training")
    p.add_argument("--config", help="JSON/TOML file, preset name, or reference paramfile .py")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--out", required=True)
    _add_cutoffs(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_columns(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("update", help="continue training a saved model on new clicks")
    p.add_argument("--model", required=True, help="the parent model directory")
    p.add_argument("--train", required=True, help="the new clicks")
    p.add_argument("--out", required=True, help="where the updated model goes")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--features", help="p-RNN: .npy, one row per item of the updated vocabulary")
    p.add_argument("--test", help="evaluate on this file after the update (unknown items dropped)")
    p.add_argument("--min-item-support", type=int, default=5, help="clicks a new item needs")
    p.add_argument("--min-session-length", type=int, default=2)
    p.add_argument("--new-rows", default="mean", choices=["mean", "init"])
    _add_cutoffs(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_columns(p)
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("evaluate", help="full-ranking Recall/MRR/NDCG@k of a trained model")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True)
    _add_cutoffs(p)
    p.add_argument("--batch-size", type=_positive, default=512)
    p.add_argument(
        "--tie-mode", default="conservative", choices=["conservative", "standard", "median"]
    )
    p.add_argument("--drop-unknown", action="store_true", help="skip clicks on unknown items")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument(
        "--history", help="earlier clicks with user ids: build users' state (HRNN) first"
    )
    _add_columns(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "baselines", help="most-popular, item-KNN, V-SKNN, STAN, VSTAN; same evaluation"
    )
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    _add_cutoffs(p)
    p.add_argument(
        "--tune-trials", type=int, default=0, help="tune STAN/VSTAN first, on a validation split"
    )
    p.add_argument("--valid-days", type=float, default=1.0, help="with --tune-trials")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_columns(p)
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("tune", help="Optuna search on a validation split of the training data")
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True, help="writes best.json, trials.csv, summary.json")
    p.add_argument("--valid", help="validation file; default: the last --valid-days of --train")
    p.add_argument("--valid-days", type=float, default=1.0)
    p.add_argument("--study", help="SQLite file of the study (resumable); default OUT/study.db")
    p.add_argument("--study-name", default="gru4rec")
    p.add_argument(
        "--loss", choices=["cross-entropy", "bpr-max"], help="default: the base config's loss"
    )
    p.add_argument("--metric", default="mrr@20", help="mrr@K or recall@K, maximised")
    p.add_argument("--trials", type=_positive, default=20, help="trials in this run")
    p.add_argument("--timeout", type=float, default=None, help="seconds for this run")
    p.add_argument("--config", help="base config, trial 0; file or preset name")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="fixed")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prune-startup-trials", type=int, default=3)
    p.add_argument("--prune-warmup-epochs", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress display")
    _add_columns(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="HTML report: the model against the baselines, and why")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, help="writes index.html, PNG plots, results.json")
    p.add_argument(
        "--train", help="training clicks (baselines, an HRNN's history); default: the model's"
    )
    p.add_argument("--tuning", help="the --out directory of `tune`, for its section")
    p.add_argument("--knn-params", help='JSON {"stan": {...}, "vstan": {...}} (compare_tuned)')
    p.add_argument("--extra-model", action="append", default=[], help="another model, a row")
    _add_cutoffs(p)
    p.add_argument("--top-k", type=int, default=20, help="list length for coverage and bias")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_columns(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write model.onnx and what the service needs")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=None)
    p.add_argument(
        "--quantize",
        choices=["auto", "none", "int8"],
        default="auto",
        help="int8: the output layer's product on int8 weights (cheaper, slightly less "
        "exact; scripts/bench_quantize.py measures both); none: float32; default auto: int8 "
        "from 5,000 items when it ranks the check clicks within 0.5%% of float32",
    )
    p.add_argument(
        "--check-clicks",
        help="clicks (TSV) that --quantize auto checks int8 on, their last 2,000 sessions; "
        "default: the model's training file",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_columns(p, users=False)  # of the check clicks
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="compare onnxruntime and PyTorch scores")
    p.add_argument("--model", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
