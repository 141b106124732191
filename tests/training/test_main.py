"""The command line, end to end on a small generated log, and its errors."""

import json

import pytest
import torch

from training.__main__ import main


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_matches_the_cpu_evaluation_pipeline(demo_dir, tmp_path):
    model = tmp_path / "gpu-model"
    data = ["--train", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv")]
    main(["train", *data, "--out", str(model), "--param", "device=cuda", "--quiet"])
    saved = json.loads((model / "config.json").read_text())
    assert saved["meta"]["evaluation"]["recall@20"] > 0
