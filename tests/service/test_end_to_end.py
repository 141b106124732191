"""Train, export, serve, replay: the service reproduces the offline evaluation.

A tiny GRU4Rec is trained on synthetic sessions and evaluated offline (training.evaluate:
all items ranked by raw score, ties against the model). The same model is exported and
served with the online layer off (its answers are the model's alone); every test session is
replayed click by click through the gRPC client with the default request (clicked items may
come back, as the offline evaluation ranks them too), and the target's position in the
returned top-20 gives the rank. Recall and MRR must match.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.config import Config
from training.data.logs import ItemVocab, Sessions, item_popularity, split_by_time
from training.data.synthetic import generate
from training.evaluate import GRUScorer, evaluate, metrics_from_ranks
from training.export import check_parity, export_model
from training.fit.train import fit, save_model

CUTOFFS = (1, 5, 10, 20)


@pytest.mark.slow
def test_replaying_test_sessions_through_the_service_gives_the_offline_metrics(
    tmp_path, start_model_only_server
):
    events = generate(n_items=150, n_sessions=1500, days=6, seed=4).events
    train_df, test_df = split_by_time(events, test_days=1.0)
    vocab = ItemVocab.from_events(train_df)
    train = Sessions.from_events(train_df, vocab)
    test = Sessions.from_events(test_df, vocab, "drop")
    cfg = Config(layers=(24,), n_epochs=2, batch_size=32, n_sample=64, learning_rate=0.1)
    model, _ = fit(train, len(vocab), cfg, progress=False)
    offline = evaluate(GRUScorer(model), test, cutoffs=CUTOFFS)
    save_model(
        tmp_path / "model", model, cfg, vocab, item_popularity(train, len(vocab)),
        {"evaluation": offline},
    )  # fmt: skip
    export_dir = export_model(tmp_path / "model", tmp_path / "export")
    assert check_parity(tmp_path / "model", export_dir)["ok"]

    client = start_model_only_server(model_dir=export_dir).client
    ranks = []
    for s in range(test.n_sessions):
        clicks = [str(vocab.ids[i]) for i in test.session(s)]
        for t in range(len(clicks) - 1):
            response = client.recommend(f"test-{s}", clicks[: t + 1], top_k=max(CUTOFFS))
            returned = [it.item_id for it in response.items]
            target = clicks[t + 1]
            ranks.append(returned.index(target) + 1 if target in returned else np.inf)
    online = metrics_from_ranks(np.array(ranks), CUTOFFS)

    assert len(ranks) == offline["n_events"] > 300
    assert offline["recall@20"] > 0.1  # the model learnt something, so ranks are informative
    for k in CUTOFFS:
        for name in (f"recall@{k}", f"mrr@{k}"):
            assert online[name] == pytest.approx(offline[name], rel=1e-9, abs=1e-12), name
