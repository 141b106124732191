"""train, update and evaluate on the command line: what they check before training (so a
mistake does not cost the run), what a Ctrl-C keeps, what they refuse under torchrun, and
what they tell the user."""

import json
from pathlib import Path

import pandas as pd
import pytest

import training.fit.hrnn_fit as hrnn_fit
import training.fit.train as train_module
import training.fit.update as update_module
from training.__main__ import main
from training.data.users import users_to_dir

TINY = ["--param", "layers=8", "--param", "n_sample=16", "--param", "batch_size=8", "--quiet"]


@pytest.fixture(scope="module")
def clicks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clicks")
    main(["generate", "--out", str(out), "--items", "40", "--sessions", "300"])
    return out


@pytest.fixture(scope="module")
def parent(clicks, tmp_path_factory) -> Path:
    """A GRU4Rec trained for one epoch, the parent of the updates."""
    out = tmp_path_factory.mktemp("parent") / "model"
    main(["train", "--train", str(clicks / "train.tsv"), "--out", str(out), "--param",
          "n_epochs=1", *TINY])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> dict[str, Path]:
    """A small log with user ids, its test file without them, and an HRNN trained on it."""
    out = tmp_path_factory.mktemp("users")
    paths = users_to_dir(out, test_days=2.0, n_users=20, n_items=40, days=6.0)
    test = pd.read_csv(paths["test"], sep="\t")
    paths["no_user"] = out / "no_user.tsv"
    test.drop(columns="UserId").to_csv(paths["no_user"], sep="\t", index=False)
    paths["hrnn"] = out / "hrnn"
    hrnn = ["--param", "architecture=hrnn", "--param", "user_layer=4", "--param", "n_epochs=1"]
    main(["train", "--train", str(paths["train"]), "--out", str(paths["hrnn"]), *hrnn, *TINY])
    return paths


def _fails(argv: list[str], capsys) -> str:
    """The message of a command that must exit 2 with one line, not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the inputs were checked")


def test_hrnn_train_checks_the_test_files_user_column_before_it_trains(users, tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    """It used to train fully, then stop with KeyError 'UserId' and nothing saved."""
    monkeypatch.setattr(hrnn_fit, "fit_hrnn", _no_training)
    out = tmp_path / "m"
    data = ["--train", str(users["train"]), "--test", str(users["no_user"])]
    message = _fails(["train", *data, "--out", str(out), "--param", "architecture=hrnn", *TINY],
                     capsys)  # fmt: skip
    assert "no_user.tsv: no UserId column" in message and "--user-key" in message
    assert not out.exists()


def test_evaluate_with_history_names_a_test_file_without_user_ids(users, capsys):
    message = _fails(["evaluate", "--model", str(users["hrnn"]), "--test", str(users["no_user"]),
                      "--history", str(users["train"])], capsys)  # fmt: skip
    assert "no_user.tsv: no UserId column" in message and "--user-key" in message


def test_update_checks_its_test_file_before_it_trains(parent, clicks, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    """A typo in --test used to be found after the update trained, losing it."""
    monkeypatch.setattr(update_module, "fit", _no_training)
    update = ["update", "--model", str(parent), "--train", str(clicks / "test.tsv"), "--quiet"]
    out = tmp_path / "upd"
    missing = tmp_path / "tset.tsv"
    assert "tset.tsv" in _fails([*update, "--out", str(out), "--test", str(missing)], capsys)
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("SessionId\tItemId\tTime\n1\tnew-a\t1\n1\tnew-b\t2\n")
    message = _fails([*update, "--out", str(out), "--test", str(unknown)], capsys)
    assert "none of its 2 clicks" in message
    assert not out.exists()


def test_update_refuses_zero_epochs_as_train_does(parent, clicks, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(update_module, "fit", _no_training)
    update = ["update", "--model", str(parent), "--train", str(clicks / "test.tsv")]
    out = tmp_path / "upd"
    message = _fails([*update, "--out", str(out), "--param", "n_epochs=0"], capsys)
    assert "n_epochs=0: nothing would be trained; give 1 or more" in message
    assert not out.exists()


def _ctrl_c_in_epoch(monkeypatch, module, epoch: int) -> None:
    """module._run_epoch runs the epochs before `epoch` (1-based), then a Ctrl-C lands in it."""
    run = module._run_epoch
    calls = []

    def run_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return run(*args, **kwargs)

    monkeypatch.setattr(module, "_run_epoch", run_epoch)


def _interrupted(argv: list[str], capsys) -> str:
    """stderr of a command that a Ctrl-C ends: exit status 130 and one line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        try:
            main(argv)
        except KeyboardInterrupt:  # would end the whole test session, not this test
            pytest.fail("the Ctrl-C left the command as a traceback")
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _meta(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())["meta"]


@pytest.mark.parametrize("architecture", ["id", "hrnn"])
def test_ctrl_c_in_training_saves_the_last_completed_epoch(
    architecture, clicks, users, tmp_path, capsys, monkeypatch
):
    """Every finished epoch used to be thrown away with a traceback."""
    module = hrnn_fit if architecture == "hrnn" else train_module
    data = users["train"] if architecture == "hrnn" else clicks / "train.tsv"
    _ctrl_c_in_epoch(monkeypatch, module, 3)
    out = tmp_path / "m"
    err = _interrupted(["train", "--train", str(data), "--test", str(data), "--out", str(out),
                        "--param", f"architecture={architecture}", "--param", "n_epochs=4",
                        *TINY], capsys)  # fmt: skip
    assert f"saved the model of epoch 2 of 4 to {out}/model.pt" in err
    meta = _meta(out)
    assert meta["interrupted"] == {"epochs_done": 2, "n_epochs": 4}
    assert [e["epoch"] for e in meta["epochs"]] == [1, 2] and "evaluation" not in meta


def test_ctrl_c_before_an_epoch_completed_leaves_the_old_model(parent, clicks, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    out = tmp_path / "m"
    out.mkdir()
    for name in ("model.pt", "config.json"):
        (out / name).write_bytes((parent / name).read_bytes())
    before = (out / "model.pt").read_bytes()
    _ctrl_c_in_epoch(monkeypatch, train_module, 1)
    err = _interrupted(["train", "--train", str(clicks / "train.tsv"), "--out", str(out),
                        "--param", "n_epochs=3", *TINY], capsys)  # fmt: skip
    assert "nothing saved" in err
    assert (out / "model.pt").read_bytes() == before


def test_ctrl_c_in_an_update_saves_its_last_completed_epoch(parent, clicks, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    _ctrl_c_in_epoch(monkeypatch, train_module, 2)
    out = tmp_path / "upd"
    err = _interrupted(["update", "--model", str(parent), "--train", str(clicks / "test.tsv"),
                        "--out", str(out), "--param", "n_epochs=3", "--quiet"], capsys)  # fmt: skip
    assert f"saved the model of epoch 1 of 3 to {out}/model.pt" in err
    meta = _meta(out)
    assert meta["interrupted"] == {"epochs_done": 1, "n_epochs": 3}
    assert len(meta["epochs"]) == 1 and meta["parent"]["path"] == str(parent.resolve())


def test_update_records_the_absolute_path_of_its_clicks(parent, clicks, tmp_path, monkeypatch):
    """train records it so; report reads it from any directory."""
    monkeypatch.chdir(clicks)
    out = tmp_path / "upd"
    main(["update", "--model", str(parent), "--train", "test.tsv", "--out", str(out), "--param",
          "n_epochs=1", "--quiet"])  # fmt: skip
    assert _meta(out)["train_file"] == str((clicks / "test.tsv").resolve())


def test_update_says_it_replaces_an_existing_model(parent, clicks, tmp_path, capsys):
    update = ["update", "--model", str(parent), "--train", str(clicks / "test.tsv"), "--param",
              "n_epochs=1", "--quiet", "--out", str(tmp_path / "upd")]  # fmt: skip
    main(update)
    assert "will be replaced" not in capsys.readouterr().out
    main(update)
    assert f"{tmp_path / 'upd'}/model.pt will be replaced" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "update"])
def test_under_torchrun_hrnn_training_and_updates_are_refused(
    command, parent, clicks, users, tmp_path, capsys, monkeypatch
):
    """Neither is shared out between ranks: each rank used to run all of it alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; nothing may wait for ranks
    monkeypatch.setenv("RANK", "0")
    out = str(tmp_path / "m")
    if command == "train":
        argv = ["train", "--train", str(users["train"]), "--param", "architecture=hrnn", *TINY]
        expected = "architecture=hrnn trains in one process"
    else:
        argv = ["update", "--model", str(parent), "--train", str(clicks / "test.tsv"), "--quiet"]
        expected = "update runs in one process"
    message = _fails([*argv, "--out", out], capsys)
    assert expected in message and "run it without torchrun" in message


def test_evaluate_drop_unknown_says_how_many_clicks_it_dropped(parent, clicks, tmp_path, capsys):
    lines = (clicks / "test.tsv").read_text().splitlines()
    session, _, time = lines[1].split("\t")
    test = tmp_path / "test.tsv"
    test.write_text("\n".join([*lines, f"{session}\tnew-item\t{time}"]) + "\n")
    main(["evaluate", "--model", str(parent), "--test", str(test), "--drop-unknown"])
    assert f"1 of {len(lines):,} test clicks dropped" in capsys.readouterr().out


def test_hrnn_evaluate_says_what_the_users_state_comes_from_and_shows_progress(users, capsys):
    main(["evaluate", "--model", str(users["hrnn"]), "--test", str(users["test"])])
    captured = capsys.readouterr()
    assert "note: no --history" in captured.out and "--history FILE" in captured.out
    assert "evaluate: 100%" in captured.err  # the progress bar the GRU4Rec path shows
    main(["evaluate", "--model", str(users["hrnn"]), "--test", str(users["test"]), "--history",
          str(users["train"])])  # fmt: skip
    assert "note:" not in capsys.readouterr().out
