"""training.evaluation.tune: the validation split, a tiny study that resumes from its SQLite
file and prunes a hopeless trial, and a best configuration that `train --config` accepts; a
resume under other settings is refused, and one after a run that stopped in the base trial
runs the base."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest

from training.__main__ import main
from training.config import Config
from training.data.logs import DAY, write_events
from training.data.synthetic import generate
from training.evaluation.tune import (
    SPACES,
    TuneOptions,
    narrowed_space,
    parse_metric,
    run_study,
    validation_split,
)


def test_validation_holds_sessions_that_start_after_the_cut_and_drops_straddlers():
    rows = [
        ("a", "x", 0.0),
        ("a", "y", 100.0),  # ends before the cut: training
        ("b", "x", 2 * DAY - 10),
        ("b", "y", 2 * DAY + 10),  # straddles the cut: left out
        ("c", "x", 2.5 * DAY),
        ("c", "z", 2.5 * DAY + 5),  # z is not in training: dropped, c left too short
        ("d", "y", 2.6 * DAY),
        ("d", "x", 3 * DAY),  # starts after the cut: validation
    ]
    events = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    train, valid = validation_split(events, days=1.0)  # cut at 2 days
    assert sorted(train.SessionId.unique()) == ["a"]
    assert sorted(valid.SessionId.unique()) == ["d"]


def test_ranges_narrow_the_declared_space_and_fixed_parameters_leave_it():
    space = narrowed_space("cross-entropy", ("learning_rate=0.02:0.1",), {"layers"})
    assert "layers" not in space and space["learning_rate"].low == 0.02
    assert "bpreg" in SPACES["bpr-max"] and "logq" not in SPACES["bpr-max"]
    with pytest.raises(ValueError, match="NAME=LOW:HIGH"):
        narrowed_space("cross-entropy", ("n_sample=1:2",), set())


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    write_events(generate(n_items=50, n_sessions=300, days=3, seed=5).events, root / "train.tsv")
    return root


def options(root, trials: int, out: str = "out") -> TuneOptions:
    fixed = ("layers=16", "batch_size=16", "n_sample=16", "n_epochs=2", "threads=1")
    return TuneOptions(
        train=str(root / "train.tsv"),
        out=str(root / out),
        trials=trials,
        params=fixed,
        prune_startup_trials=1,
        prune_warmup_epochs=0,
        progress=False,
    )


def test_study_resumes_prunes_a_hopeless_trial_and_writes_a_loadable_best_config(log, capsys):
    first = run_study(options(log, 1))
    assert first["trials"] == 1 and first["base_value"] == first["best_value"] > 0
    study = optuna.load_study(study_name="gru4rec", storage=f"sqlite:///{log}/out/study.db")
    study.enqueue_trial({"learning_rate": 1e-6, "momentum": 0.0})  # learns nothing
    second = run_study(options(log, 1))
    assert second["trials"] == 2 and second["pruned"] == 1
    third = run_study(options(log, 1))
    assert third["trials"] == 3
    best = json.loads((log / "out" / "best.json").read_text())
    assert best["layers"] == [16] and best["n_epochs"] == 2
    assert best["learning_rate"] == third["best_params"]["learning_rate"]
    assert len(pd.read_csv(log / "out" / "trials.csv")) == 3
    cfg = Config.from_sources(log / "out" / "best.json")
    assert cfg.learning_rate == best["learning_rate"]
    main(
        ["train", "--train", str(log / "train.tsv"), "--config", str(log / "out" / "best.json")]
        + ["--out", str(log / "model"), "--quiet"]
    )
    assert (log / "model" / "model.pt").exists()


def test_a_resume_under_other_settings_is_refused_and_says_what_differs(log, capsys):
    first = options(log, 1, "refuse")
    run_study(first)
    changes = {
        "metric mrr@20 (now recall@20)": replace(first, metric="recall@20"),
        "loss cross-entropy (now bpr-max)": replace(first, loss="bpr-max"),
        "learning_rate 0.05 (now 0.1)": replace(first, params=(*first.params, "learning_rate=0.1")),
        "space learning_rate 0.01:0.25 (now 0.02:0.1)": replace(
            first, ranges=("learning_rate=0.02:0.1",)
        ),
    }
    for diff, changed in changes.items():
        with pytest.raises(ValueError, match="other settings: .*" + re.escape(diff)):
            run_study(changed)
    with pytest.raises(SystemExit) as exit_:  # the CLI: one line, exit 2
        main(["tune", "--train", first.train, "--out", first.out, "--metric", "recall@20"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "another --out" in err
    study = optuna.load_study(study_name="gru4rec", storage=f"sqlite:///{first.out}/study.db")
    assert len(study.trials) == 1  # nothing mixed in
    # where a trial runs is no setting of the study
    assert run_study(replace(first, params=(*first.params, "threads=2")))["trials"] == 2


@pytest.mark.parametrize("stop", ["interrupted", "failed", "before it began"])
def test_a_resume_runs_the_base_when_the_first_run_stopped_in_it(log, monkeypatch, stop):
    first = options(log, 1, f"stopped-{stop.replace(' ', '-')}")
    if stop == "before it began":  # the base stays queued: it must run once, not twice
        with pytest.raises(RuntimeError, match="no trial finished"):
            run_study(replace(first, trials=0))
    else:
        error = KeyboardInterrupt if stop == "interrupted" else RuntimeError

        def fit(*args, **kwargs):  # Ctrl-C, or a crash, in the base trial
            raise error

        monkeypatch.setattr("training.fit.train.fit", fit)
        with pytest.raises(error):
            run_study(first)
        monkeypatch.undo()
    second = run_study(first)
    study = optuna.load_study(study_name="gru4rec", storage=f"sqlite:///{first.out}/study.db")
    base = study.trials[-1]
    assert base.state.name == "COMPLETE" and base.params["learning_rate"] == 0.05  # the default
    assert second["base_value"] == base.value > 0
    assert second["trials"] == (1 if stop == "before it began" else 2)


@pytest.mark.parametrize("metric", ["mrr@0", "recall@", "ndcg@20", "mrr20"])
def test_a_metric_that_is_no_cutoff_of_mrr_or_recall_is_refused(metric):
    with pytest.raises(ValueError, match="must look like mrr@20 or recall@20"):
        parse_metric(metric)


def test_the_base_configs_loss_is_kept_and_picks_the_search_space(log, tmp_path):
    preset = tmp_path / "bprmax.json"
    preset.write_text(json.dumps({"loss": "bpr-max", "bpreg": 0.5, "elu_param": 1.0}))
    from_file = replace(options(log, 1, "loss-file"), config=str(preset))
    summary = run_study(from_file)
    assert json.loads((log / "loss-file" / "best.json").read_text())["loss"] == "bpr-max"
    assert {"bpreg", "elu_param"} <= set(summary["best_params"])
    assert "logq" not in summary["best_params"]
    from_param = options(log, 1, "loss-param")
    summary = run_study(replace(from_param, params=(*from_param.params, "loss=bpr-max")))
    assert "bpreg" in summary["best_params"] and "logq" not in summary["best_params"]
    with pytest.raises(ValueError, match="--loss cross-entropy contradicts .* loss=bpr-max"):
        run_study(replace(from_file, loss="cross-entropy", out=str(tmp_path / "x")))
    # --loss still picks the loss of a base that names none
    assert run_study(replace(options(log, 1, "loss-flag"), loss="bpr-max"))["best_params"]["bpreg"]


def test_a_base_of_several_layers_keeps_them_and_its_off_grid_choices_run(log, tmp_path, capsys):
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"layers": [16, 8], "n_sample": 16}))  # 16: not a listed choice
    base = replace(options(log, 2, "two-layers"), config=str(two), params=("n_epochs=1",))
    summary = run_study(base)
    assert "layers stay 16/8" in capsys.readouterr().out
    assert (summary["trials"], summary["failed"]) == (2, 0)
    assert "layers" not in summary["best_params"]
    assert json.loads((log / "two-layers" / "best.json").read_text())["layers"] == [16, 8]
    with pytest.raises(ValueError, match="layers is fixed"):
        run_study(replace(base, ranges=("layers=32:64",)))


def test_ctrl_c_writes_the_completed_trials_and_exits_130_and_a_killed_trial_is_failed(
    log, monkeypatch, capsys
):
    from training.fit import train as train_module

    real_fit, calls = train_module.fit, []

    def fit(*args, **kwargs):  # Ctrl-C in the second trial
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit", fit)
    out = log / "ctrl-c"
    args = ["tune", "--train", str(log / "train.tsv"), "--out", str(out), "--trials", "5"]
    args += ["--quiet", "--prune-warmup-epochs", "0"]
    args += [f"--param={p}" for p in options(log, 1).params]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted; rerun the same command to resume\n"
    assert "Traceback" not in captured.out + captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["trials"], summary["complete"], summary["failed"]) == (2, 1, 1)
    assert (out / "best.json").exists() and len(pd.read_csv(out / "trials.csv")) == 2
    monkeypatch.undo()

    storage = f"sqlite:///{out}/study.db"
    optuna.load_study(study_name="gru4rec", storage=storage).ask()  # kill -9 in a trial
    main(args[:6] + ["1"] + args[7:])
    assert "trial 2 was left running by a run that stopped" in capsys.readouterr().out
    states = [t.state.name for t in optuna.load_study(study_name="gru4rec", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["trials"], summary["complete"], summary["failed"]) == (4, 2, 2)


def test_the_item_index_is_the_whole_training_files_as_a_features_file_has_it(tmp_path):
    from training.data.logs import ItemVocab, read_events
    from training.evaluation.tune import load_data

    last, cut = 10 * DAY, 9 * DAY
    rows = [("s0", "A", 0), ("s0", "B", 10), ("s1", "A", 20), ("s1", "B", 30)]
    rows += [("sX", "X", cut - 100), ("sX", "A", cut + 100)]  # straddles the cut: left out
    rows += [("s2", "Y", cut - 60), ("s2", "X", cut - 50)]  # so the fit part meets Y first
    rows += [("sv", "A", last - 20), ("sv", "B", last - 10), ("sv", "Z", last)]  # Z: held out
    write_events(pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]), tmp_path / "t.tsv")
    whole = ItemVocab.from_events(read_events(tmp_path / "t.tsv"))
    assert list(whole.ids) == ["A", "B", "X", "Y", "Z"]
    np.save(tmp_path / "features.npy", np.eye(5, dtype=np.float32))  # features tool's order
    base = TuneOptions(train=str(tmp_path / "t.tsv"), out=str(tmp_path / "out"), trials=1)
    params = ("architecture=feature", f"features={tmp_path / 'features.npy'}", "n_epochs=1")
    params += ("layers=8", "n_sample=0", "batch_size=2", "threads=1")
    summary = run_study(replace(base, params=params, progress=False))
    assert summary["complete"] == 1
    assert list(load_data(base).vocab.ids) == list(whole.ids)  # X and Y not swapped
