"""The command line, end to end on a small generated log, and its errors."""

import json
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
