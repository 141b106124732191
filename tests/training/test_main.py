"""The command line, end to end on a small generated log, and its errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.fit.train import load_model


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    main(["generate", "--out", str(out), "--items", "300", "--sessions", "3000"])
    return out


def test_generate_train_evaluate_round_trip(demo_dir, tmp_path, capsys):
    model = tmp_path / "model"
    main([
        "train", "--train", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv"),
        "--out", str(model), "--param", "layers=16", "--param", "n_epochs=1",
        "--param", "n_sample=32", "--param", "batch_size=16", "--quiet",
    ])  # fmt: skip
    saved = json.loads((model / "config.json").read_text())
    assert saved["config"]["layers"] == [16] and "recall@20" in saved["meta"]["evaluation"]
    metrics = tmp_path / "m.json"
    main(["evaluate", "--model", str(model), "--test", str(demo_dir / "test.tsv"),
          "--cutoffs", "5", "20", "--json", str(metrics)])  # fmt: skip
    result = json.loads(metrics.read_text())
    assert set(result) == {"recall@5", "mrr@5", "ndcg@5", "recall@20", "mrr@20", "ndcg@20",
                           "n_events"}  # fmt: skip
    assert result["recall@20"] == pytest.approx(saved["meta"]["evaluation"]["recall@20"])
    assert "| recall@5 |" in capsys.readouterr().out


def test_bad_input_exits_with_a_message_not_a_traceback(demo_dir, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--train", str(bad), "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2
    assert "missing column(s) ItemId" in capsys.readouterr().err


def test_bad_parameter_is_reported_by_name(demo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--train", str(demo_dir / "train.tsv"), "--out", str(tmp_path / "m"),
              "--param", "loss=hinge"])  # fmt: skip
    assert "loss='hinge' is not one of" in capsys.readouterr().err


# No sampled negatives and no dropout: nothing is drawn from a device's random generator
# (CPU and CUDA ones give different streams), so a CPU and a CUDA run see the same numbers
# and differ only by rounding.
SAME_ON_ANY_DEVICE = ["--param", "layers=16", "--param", "n_epochs=1", "--param", "n_sample=0",
                      "--param", "batch_size=16", "--quiet"]  # fmt: skip


def _train_on(device: str, demo_dir, out) -> dict:
    data = ["--train", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv")]
    main(["train", *data, "--out", str(out), *SAME_ON_ANY_DEVICE, "--param", f"device={device}"])
    return json.loads((out / "config.json").read_text())["meta"]


@pytest.fixture(scope="module")
def cpu_trained(demo_dir, tmp_path_factory) -> tuple[Path, dict]:
    """(model directory, its meta) of the reference run on the CPU."""
    out = tmp_path_factory.mktemp("cpu") / "model"
    return out, _train_on("cpu", demo_dir, out)


def _scores(model_dir, device: str) -> torch.Tensor:
    """(5 steps, 32 sessions, n_items) scores of the saved model on `device`, back on the CPU."""
    model = load_model(model_dir, device).model
    steps = []
    with torch.no_grad():
        hidden = model.init_hidden(32, device)
        for step in range(5):
            items = (torch.arange(32, device=device) * 7 + step) % model.n_items
            scores, hidden = model(items, hidden, None)
            steps.append(scores.cpu())
    return torch.stack(steps)


@pytest.mark.gpu
def test_the_same_weights_score_and_evaluate_alike_on_cpu_and_cuda(demo_dir, cpu_trained, tmp_path):
    model, _ = cpu_trained
    torch.testing.assert_close(_scores(model, "cuda"), _scores(model, "cpu"), rtol=1e-4, atol=1e-4)
    figures = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        main(["evaluate", "--model", str(model), "--test", str(demo_dir / "test.tsv"),
              "--device", device, "--json", str(out)])  # fmt: skip
        figures[device] = json.loads(out.read_text())
    print(figures)
    n_events = figures["cpu"]["n_events"]
    assert figures["cuda"]["n_events"] == n_events > 500
    for name, value in figures["cpu"].items():  # rounding may turn a near-tie or two
        assert figures["cuda"][name] == pytest.approx(value, abs=3 / n_events), name


@pytest.mark.gpu
def test_training_on_cuda_matches_training_on_cpu(demo_dir, cpu_trained, tmp_path):
    _, cpu = cpu_trained
    cuda = _train_on("cuda", demo_dir, tmp_path / "cuda-model")
    print({"cpu": cpu["evaluation"], "cuda": cuda["evaluation"]})
    print({"cpu": cpu["epochs"], "cuda": cuda["epochs"]})
    # the same steps from the same start: rounding apart (cuBLAS sums in another order, and
    # the CUDA run replays its steps as a CUDA graph), the same loss and the same accuracy
    assert cuda["epochs"][0]["loss"] == pytest.approx(cpu["epochs"][0]["loss"], rel=1e-3)
    assert cpu["evaluation"]["recall@20"] > 0.5  # it learnt something worth comparing (0.75)
    for name in ("recall@20", "mrr@20"):  # 0.02: about 20 of the 1,028 test events
        assert cuda["evaluation"][name] == pytest.approx(cpu["evaluation"][name], abs=0.02), name


def _fails(argv: list[str], capsys) -> str:
    """The message of a command that must exit 2 with one line, not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "argument --batch-size: 0 must be 1 or more"),
        (["--batch-size", "-1"], "argument --batch-size: -1 must be 1 or more"),
        (["--cutoffs", "20", "0"], "argument --cutoffs: 0 must be 1 or more"),
        (["--device", "tpu"], "device='tpu' is not a device"),
    ],
)
def test_evaluate_refuses_settings_it_cannot_honour(cpu_trained, demo_dir, capsys, extra, message):
    model, _ = cpu_trained
    test = ["--model", str(model), "--test", str(demo_dir / "test.tsv")]
    assert message in _fails(["evaluate", *test, *extra], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there to be used")
def test_a_missing_gpu_is_said_before_any_work(cpu_trained, demo_dir, tmp_path, capsys):
    model, _ = cpu_trained
    test = ["--model", str(model), "--test", str(demo_dir / "test.tsv")]
    assert "CUDA is not available" in _fails(["evaluate", *test, "--device", "cuda"], capsys)
    train = ["train", "--train", str(demo_dir / "train.tsv"), "--out", str(tmp_path / "m")]
    assert "CUDA is not available" in _fails([*train, "--param", "device=cuda"], capsys)


def test_train_checks_the_test_file_and_the_output_before_it_trains(demo_dir, tmp_path, capsys):
    """A bad --test or --out used to end a finished training with nothing saved."""
    train = ["train", "--train", str(demo_dir / "train.tsv"), *SAME_ON_ANY_DEVICE]
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("SessionId\tItemId\tTime\n1\tnew-a\t1\n1\tnew-b\t2\n")
    out = tmp_path / "model"
    assert "none of its 2 clicks" in _fails([*train, "--test", str(unknown), "--out", str(out)],
                                           capsys)  # fmt: skip
    missing = tmp_path / "no-such.tsv"
    assert "no-such.tsv" in _fails([*train, "--test", str(missing), "--out", str(out)], capsys)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert "is a file" in _fails([*train, "--out", str(a_file)], capsys)
    assert "nothing would be trained" in _fails(
        [*train, "--out", str(out), "--param", "n_epochs=0"], capsys
    )
    assert not (out / "model.pt").exists()


def test_the_model_records_where_its_training_clicks_are_from_anywhere(cpu_trained, demo_dir):
    _, meta = cpu_trained
    assert Path(meta["train_file"]) == (demo_dir / "train.tsv").resolve()


def test_evaluate_drop_unknown_takes_a_session_left_with_one_click(cpu_trained, tmp_path, capsys):
    model, _ = cpu_trained
    known = load_model(model).vocab.ids
    test = tmp_path / "test.tsv"
    rows = [("1", known[0], 1), ("1", "gone", 2), ("2", known[1], 3), ("2", known[2], 4)]
    test.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    main(["evaluate", "--model", str(model), "--test", str(test), "--drop-unknown"])
    assert "1 predictions" in capsys.readouterr().out  # session 2's; session 1 has none left


def test_a_cut_short_model_file_is_named(cpu_trained, tmp_path, capsys):
    model, _ = cpu_trained
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.pt").write_bytes((model / "model.pt").read_bytes()[:1000])
    message = _fails(["evaluate", "--model", str(cut), "--test", "x.tsv"], capsys)
    assert "model.pt cannot be read" in message and "copy it again" in message


@pytest.mark.parametrize("opset", ["16", "99"])
def test_export_refuses_an_opset_it_cannot_write(cpu_trained, tmp_path, capsys, opset):
    model, _ = cpu_trained
    out = tmp_path / "export"
    message = _fails(["export", "--model", str(model), "--out", str(out), "--opset", opset], capsys)
    assert f"opset {opset} cannot be written" in message and "18-25" in message
    assert not out.exists()


def test_tune_refuses_zero_trials_or_epochs(demo_dir, tmp_path, capsys):
    tune = ["tune", "--train", str(demo_dir / "train.tsv"), "--out", str(tmp_path / "t")]
    assert "argument --trials: 0 must be 1 or more" in _fails([*tune, "--trials", "0"], capsys)
    assert "n_epochs must be 1 or more" in _fails([*tune, "--param", "n_epochs=0"], capsys)


def test_update_refuses_to_write_over_an_ancestor_of_its_model(cpu_trained, demo_dir, tmp_path,
                                                               capsys):  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(cpu_trained[0], a)
    clicks = ["--train", str(demo_dir / "test.tsv"), "--quiet", "--param", "n_epochs=1"]
    main(["update", "--model", str(a), "--out", str(b), *clicks])
    message = _fails(["update", "--model", str(b), "--out", str(a), *clicks], capsys)
    assert "holds an ancestor of --model" in message


def test_baselines_tune_and_report_read_logs_with_other_column_names(demo_dir, tmp_path, capsys):
    """Their errors tell a user to name the columns: they take the flags that do it."""
    renamed = {}
    for name in ("train", "test"):
        lines = (demo_dir / f"{name}.tsv").read_text().splitlines(keepends=True)
        renamed[name] = tmp_path / f"{name}.tsv"
        renamed[name].write_text("visit\tproduct\tts\n" + "".join(lines[1:]))
    keys = ["--session-key", "visit", "--item-key", "product", "--time-key", "ts"]
    main(["baselines", "--train", str(renamed["train"]), "--test", str(renamed["test"]),
          "--cutoffs", "20", *keys])  # fmt: skip
    assert "most-popular" in capsys.readouterr().out
    tiny = ["--param", "n_epochs=1", "--param", "layers=8", "--param", "n_sample=16", "--quiet"]
    main(["tune", "--train", str(renamed["train"]), "--out", str(tmp_path / "t"), "--trials", "1",
          *tiny, *keys])  # fmt: skip
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["trials"] == 1
