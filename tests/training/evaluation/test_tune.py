"""training.evaluation.tune: the validation split, a tiny study that resumes from its SQLite
file and prunes a hopeless trial, and a best configuration that `train --config` accepts; a
resume under other settings is refused, and one after a run that stopped in the base trial
runs the base."""

from __future__ import annotations

import json
import re
from dataclasses import replace

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
