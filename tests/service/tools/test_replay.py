"""The replay evaluator: time order across sessions (nothing from the future), every next
click counted (unknown items included), and the model alone equals offline evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.pipeline.blend import BlendConfig
from service.tools.replay import Click, build_engine, main, read_clicks, replay

# calls without a known click get the online ranking from the first click learnt (the
# server waits for 100 from 20 clients: BlendConfig.cold_min_clicks, cold_min_clients)
NO_WARM_UP = BlendConfig(cold_min_clicks=0, cold_min_clients=0)


def write_log(path, rows: list[tuple[str, str, float]]) -> None:
    lines = ["SessionId\tItemId\tTime"] + [f"{s}\t{i}\t{t}" for s, i, t in rows]
    path.write_text("\n".join(lines) + "\n")


def test_the_log_is_walked_in_time_order_across_sessions(tmp_path):
    log = tmp_path / "clicks.tsv"
    write_log(log, [("B", "y", 11.0), ("A", "a", 10.0), ("B", "x", 12.0), ("A", "x", 30.0)])
    assert [(c.session, c.item) for c in read_clicks(log)] == [
        ("A", "a"), ("B", "y"), ("B", "x"), ("A", "x"),
    ]  # fmt: skip


def test_no_prediction_uses_a_click_from_its_future(tiny):
    """x first appears at t=12 (session B). A's call at t=10 cannot know it, however the
    file is ordered; C's call at t=20 can, because B taught y -> x before it."""
    test = [
        Click("B", "y", 11.0), Click("B", "x", 12.0),  # B's answer at 11 cannot hold x
        Click("A", "a", 10.0), Click("A", "x", 30.0),  # A's answer was made at 10
        Click("C", "y", 20.0), Click("C", "x", 25.0),  # C's answer at 20 knows y -> x
    ]  # fmt: skip
    test.sort(key=lambda c: c.time)
    engine = build_engine(tiny.export_dir, online=True, use_model=False, blend=NO_WARM_UP)
    figures = replay(engine, [], test, cutoffs=(20,))
    assert figures["n_predictions"] == 3
    assert figures["recall@20"] == pytest.approx(1 / 3)  # only C's target
    assert figures["unknown_target_share"] == 1.0  # x is not one of the model's items


def test_history_is_learnt_but_not_scored(tiny):
    history = [Click("H", "y", 1.0), Click("H", "x", 2.0)]
    test = [Click("A", "y", 10.0), Click("A", "x", 11.0)]
    engine = build_engine(tiny.export_dir, online=True, use_model=False, blend=NO_WARM_UP)
    figures = replay(engine, history, test)
    assert figures["n_predictions"] == 1 and figures["recall@20"] == 1.0


def test_the_model_alone_ranks_as_offline_evaluation_does(tiny):
    rng = np.random.default_rng(0)
    test, t = [], 0.0
    for s in range(30):
        for item in rng.choice(tiny.item_ids, size=int(rng.integers(2, 6))):
            t += 1.0
            test.append(Click(f"s{s}", str(item), t))
    engine = build_engine(tiny.export_dir, online=False)
    figures = replay(engine, [], test, cutoffs=(5, 20))
    ranks = []
    for s in range(30):
        clicks = [c.item for c in test if c.session == f"s{s}"]
        for n in range(1, len(clicks)):
            scores = tiny.scores_after(clicks[:n])
            target = tiny.index(clicks[n])
            # ties against the model, as training.evaluate counts them
            ranks.append(int(np.sum(scores >= scores[target])))
    ranks = np.array(ranks)
    assert figures["n_predictions"] == len(ranks)
    assert figures["recall@20"] == pytest.approx(np.mean(ranks <= 20))
    assert figures["recall@5"] == pytest.approx(np.mean(ranks <= 5))
    assert figures["mrr@5"] == pytest.approx(np.mean(np.where(ranks <= 5, 1 / ranks, 0)))


def test_the_command_line_writes_the_figures(tiny, tmp_path, capsys):
    log = tmp_path / "test.tsv"
    write_log(log, [("A", tiny.item_ids[1], 1.0), ("A", tiny.item_ids[2], 2.0)])
    out = tmp_path / "figures.json"
    assert main(["--model", str(tiny.export_dir), "--test", str(log), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["n_predictions"] == 1 and figures["settings"]["online"] is True
    bad = tmp_path / "bad.tsv"
    bad.write_text("session\titem\n1\t2\n")
    assert main(["--model", str(tiny.export_dir), "--test", str(bad)]) == 2
    assert "no column ItemId, SessionId, Time" in capsys.readouterr().err
