"""training.evaluation.report: every section and plot is written, and the figures in the tables are
the ones training.evaluate computes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.config import Config
from training.data.batching import session_parallel
from training.data.logs import (
    DataError,
    ItemVocab,
    Sessions,
    item_popularity,
    read_events,
    split_by_time,
    write_events,
)
from training.data.synthetic import generate
from training.evaluate import GRUScorer, evaluate
from training.evaluation.baselines import ItemKNN
from training.evaluation.report import (
    ReportOptions,
    gini,
    make_report,
    prediction_facts,
    run_scorer,
)
from training.fit.train import fit, load_model, save_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    events = generate(n_items=120, n_sessions=900, days=4, seed=2).events
    train_df, test_df = split_by_time(events, test_days=1)
    write_events(train_df, root / "train.tsv")
    write_events(test_df, root / "test.tsv")
    vocab = ItemVocab.from_events(train_df)
    train = Sessions.from_events(train_df, vocab)
    cfg = Config(layers=(16,), batch_size=16, n_sample=32, n_epochs=2, threads=1)
    model, history = fit(train, len(vocab), cfg, progress=False)
    meta = {
        "train_file": str(root / "train.tsv"),
        "epochs": [{"epoch": e.epoch, "loss": e.loss} for e in history.epochs],
    }
    save_model(root / "model", model, cfg, vocab, item_popularity(train, len(vocab)), meta)
    summary = {"metric": "mrr@20", "base_value": 0.1, "best_value": 0.2, "best_trial": 1}
    summary |= {"trials": 3, "pruned": 1, "curve": [0.1, 0.2, None]}
    summary |= {"running_best": [0.1, 0.2, 0.2]}
    (root / "tune").mkdir()
    (root / "tune" / "summary.json").write_text(json.dumps(summary))
    return root


def test_report_writes_every_section_and_plot(tiny):
    out = tiny / "out"
    options = ReportOptions(
        str(tiny / "model"), str(tiny / "test.tsv"), str(out), tuning=str(tiny / "tune")
    )
    page = make_report(options).read_text()
    for section in ("metrics", "by-length", "by-popularity", "training", "tuning", "lists"):
        assert f'id="{section}"' in page
    for png in ("by_length.png", "by_popularity.png", "training.png", "tuning.png"):
        assert (out / png).stat().st_size > 1000 and f'src="{png}"' in page
    for name in ("gru4rec", "most-popular", "item-knn", "v-sknn", "stan", "vstan"):
        assert f"<td>{name}</td>" in page

    trained = load_model(tiny / "model")
    test = Sessions.from_events(read_events(tiny / "test.tsv"), trained.vocab, "drop")
    expected = evaluate(GRUScorer(trained.model), test, (1, 5, 10, 20))
    results = json.loads((out / "results.json").read_text())
    for key in ("recall@1", "recall@20", "mrr@5", "mrr@20"):
        assert results["gru4rec"]["metrics"][key] == pytest.approx(expected[key], abs=1e-12)
    assert f"<td>{expected['mrr@20']:.4f}</td>" in page


def test_facts_line_up_with_the_targets_of_the_evaluation_walk(tiny):
    trained = load_model(tiny / "model")
    test = Sessions.from_events(read_events(tiny / "test.tsv"), trained.vocab, "drop")
    facts = prediction_facts(test)
    walked = np.concatenate(
        [s.targets.numpy() for s in session_parallel(test.items, test.offsets, 512)]
    )
    assert np.array_equal(facts["target"], walked)
    n_sessions_by_length = np.bincount(np.diff(test.offsets))
    lengths, counts = np.unique(facts["length"], return_counts=True)
    assert np.array_equal(counts, n_sessions_by_length[lengths] * (lengths - 1))
    run = run_scorer(ItemKNN.fit(test, len(trained.vocab)), test, len(trained.vocab), 20)
    assert run.recommended.sum() == 20 * len(run.ranks) == 20 * len(walked)


def test_gini_is_zero_for_equal_spread_and_near_one_for_one_item():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.array([0] * 99 + [5])) == pytest.approx(0.99)


def test_extra_models_of_the_same_directory_name_keep_a_row_each(tiny, tmp_path):
    for parent in ("a", "b"):
        shutil.copytree(tiny / "model", tmp_path / parent / "model")
    extras = (str(tmp_path / "a" / "model"), str(tmp_path / "b" / "model"))
    options = ReportOptions(
        str(tiny / "model"), str(tiny / "test.tsv"), str(tmp_path / "out"), extra_models=extras
    )
    make_report(options)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [name for name in results if name.startswith("gru4rec")] == [
        "gru4rec", "gru4rec (model)", f"gru4rec ({(tmp_path / 'b' / 'model').resolve()})",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="another --extra-model again"):
        make_report(replace(options, extra_models=(extras[0], extras[0])))


def test_a_wrong_tuning_directory_fails_before_any_evaluation(tiny, tmp_path, monkeypatch):
    def evaluate_nothing(*args):
        raise AssertionError("the report evaluated before it read --tuning")

    monkeypatch.setattr("training.evaluation.report.build_scorers", evaluate_nothing)
    options = ReportOptions(
        str(tiny / "model"), str(tiny / "test.tsv"), str(tmp_path / "out"), tuning="tnue"
    )
    with pytest.raises(FileNotFoundError, match="--tuning takes the --out of"):
        make_report(options)


def test_an_hrnn_is_scored_with_its_users_history_and_named_so(tmp_path):
    from training.data.user_batching import UserSessions, with_history
    from training.data.users import users_to_dir
    from training.evaluation.user_evaluate import evaluate_users, scorer_for
    from training.models.architectures import build_model

    paths = users_to_dir(tmp_path / "users", n_users=60, n_items=80, n_categories=8, days=6)
    columns = ("SessionId", "ItemId", "Time", "UserId")
    train_df, test_df = read_events(paths["train"], *columns), read_events(paths["test"], *columns)
    vocab = ItemVocab.from_events(train_df)
    torch.manual_seed(0)
    cfg = Config(architecture="hrnn", layers=(12,), user_layer=6)
    model = build_model(len(vocab), cfg).eval()  # random weights: the history still counts
    popularity = np.bincount(vocab.encode(train_df.ItemId.to_numpy())[0], minlength=len(vocab))
    meta = {"train_file": str(paths["train"])}
    save_model(tmp_path / "hrnn", model, cfg, vocab, popularity, meta)
    out = tmp_path / "out"
    options = ReportOptions(str(tmp_path / "hrnn"), str(paths["test"]), str(out), columns=columns)
    make_report(options)
    results = json.loads((out / "results.json").read_text())
    assert list(results)[0] == "hrnn" and "gru4rec" not in results
    plan = UserSessions.from_events(with_history(test_df, train_df), vocab, "drop")
    expected = evaluate_users(scorer_for(model), plan, (1, 5, 10, 20))  # evaluate --history's
    alone = UserSessions.from_events(with_history(test_df, None), vocab, "drop")
    assert evaluate_users(scorer_for(model), alone)["mrr@20"] != expected["mrr@20"]
    for key in ("recall@20", "mrr@5", "mrr@20"):
        assert results["hrnn"]["metrics"][key] == pytest.approx(expected[key], abs=1e-12)
    for buckets in ("by_length", "by_popularity"):  # the same predictions, in another order
        counts = {k: b["n"] for k, b in results["hrnn"][buckets].items()}
        assert counts == {k: b["n"] for k, b in results["most-popular"][buckets].items()}
    without_users = tmp_path / "test_without_users.tsv"
    test_df.drop(columns="UserId").to_csv(without_users, sep="\t", index=False)
    with pytest.raises(DataError, match="no UserId column; an HRNN is scored with"):
        make_report(replace(options, test=str(without_users)))
