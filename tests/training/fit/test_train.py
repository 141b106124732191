"""Training end to end on synthetic data: it learns, it beats most-popular, files round-trip."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import training.fit.train as train_module
from tests.conftest import markov_sessions
from training.config import Config
from training.data.batching import apply_step_to_hidden, session_parallel
from training.data.logs import ItemVocab, Sessions, item_popularity, preprocess, split_by_time
from training.data.synthetic import generate
from training.evaluate import GRUScorer, evaluate
from training.evaluation.baselines import MostPopular
from training.fit.train import Interrupted, fit, load_model, save_model


@pytest.fixture(scope="module")
def synthetic():
    events = preprocess(generate(n_items=600, n_sessions=6000, days=7, seed=3).events)
    train_df, test_df = split_by_time(events, test_days=1)
    vocab = ItemVocab.from_events(train_df)
    return Sessions.from_events(train_df, vocab), Sessions.from_events(test_df, vocab), vocab


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_gru4rec_clearly_beats_most_popular_on_synthetic_sessions(synthetic, loss):
    train, test, vocab = synthetic
    cfg = Config(
        loss=loss,
        layers=(64,),
        batch_size=32,
        n_sample=256,
        n_epochs=3,
        learning_rate=0.1,
        momentum=0.2,
        logq=1.0 if loss == "cross-entropy" else 0.0,
    )
    model, history = fit(train, len(vocab), cfg, progress=False)
    gru = evaluate(GRUScorer(model), test, cutoffs=(20,))
    pop = evaluate(MostPopular.fit(train, len(vocab)), test, cutoffs=(20,))
    assert history.epochs[-1].loss < history.epochs[0].loss
    assert gru["recall@20"] > 1.5 * pop["recall@20"] and gru["mrr@20"] > 2 * pop["mrr@20"]


@pytest.mark.parametrize("loss", ["top1", "bpr", "top1-max"])
def test_every_loss_trains_without_error_and_lowers_the_loss(loss):
    train = markov_sessions(50, 300, seed=0)
    cfg = Config(loss=loss, layers=(16,), batch_size=16, n_sample=20, n_epochs=3, learning_rate=0.1)
    _, history = fit(train, 50, cfg, progress=False)
    assert history.epochs[-1].loss < history.epochs[0].loss


def test_without_sampling_the_other_targets_are_the_only_negatives():
    train = markov_sessions(30, 200, seed=1)
    cfg = Config(layers=(8,), batch_size=8, n_sample=0, n_epochs=1, learning_rate=1e-9)
    _, history = fit(train, 30, cfg, progress=False)  # a rate so small the model stays put
    initial, _ = fit(train, 30, replace(cfg, n_epochs=0), progress=False)  # same seed, same init
    # the expected loss: each step's B inputs scored against its B targets only (B, B),
    # cross-entropy with the diagonal as labels, stopping where fewer than 2 slots remain
    total, events = 0.0, 0
    hidden = initial.init_hidden(8)
    with torch.no_grad():
        for step in session_parallel(train.items, train.offsets, 8):
            hidden = apply_step_to_hidden(step, hidden)
            if len(step.inputs) < 2:
                break
            scores, hidden = initial(step.inputs, hidden, step.targets)
            assert scores.shape == (len(step.inputs), len(step.inputs))
            labels = torch.arange(len(step.inputs))
            total += F.cross_entropy(scores, labels, reduction="sum").item()
            events += len(step.inputs)
    assert history.epochs[0].events == events
    assert history.epochs[0].loss == pytest.approx(total / events, rel=1e-4)


def test_on_epoch_sees_every_epoch_and_can_stop_training():
    train = markov_sessions(30, 100, seed=3)
    cfg = Config(layers=(8,), batch_size=8, n_sample=10, n_epochs=3)
    epochs = []
    fit(train, 30, cfg, progress=False, on_epoch=lambda stats, model: epochs.append(stats.epoch))
    assert epochs == [1, 2, 3]

    def stop(stats, model):
        raise StopIteration(stats.epoch)

    with pytest.raises(StopIteration):
        fit(train, 30, cfg, progress=False, on_epoch=stop)


def test_saved_model_rebuilds_with_identical_scores_and_records_its_config(tmp_path):
    train = markov_sessions(40, 100, seed=2)
    cfg = Config(layers=(8, 8), constrained_embedding=False, embedding=5, n_sample=10, n_epochs=1)
    model, _ = fit(train, 40, cfg, progress=False)
    vocab = ItemVocab([f"i{i}" for i in range(40)])
    save_model(tmp_path, model, cfg, vocab, item_popularity(train, 40), {"note": "x"})
    loaded = load_model(tmp_path)
    assert loaded.config == cfg and loaded.vocab.ids.tolist() == vocab.ids.tolist()
    assert loaded.meta == {"note": "x"} and loaded.popularity.sum() == train.n_events
    x = torch.tensor([1, 2, 3])
    h = model.init_hidden(3)
    assert torch.allclose(model(x, h)[0], loaded.model(x, h)[0])


def test_loading_a_missing_model_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m training train"):
        load_model(tmp_path)


def test_ctrl_c_in_an_interruptible_fit_hands_back_the_last_completed_epoch(monkeypatch):
    """What the CLI saves on Ctrl-C: the weights and optimiser state after epoch 2, not the
    half-trained ones of epoch 3."""
    train = markov_sessions(30, 100, seed=3)
    cfg = Config(layers=(8,), batch_size=8, n_sample=10, n_epochs=3, threads=1)
    two_epochs, expected = fit(train, 30, replace(cfg, n_epochs=2), progress=False)
    run, calls = train_module._run_epoch, []

    def run_epoch(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # steps of epoch 3 change the weights, then Ctrl-C lands
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
            raise KeyboardInterrupt
        return run(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", run_epoch)
    with pytest.raises(Interrupted) as stop:
        fit(train, 30, cfg, progress=False, interruptible=True)
    assert stop.value.n_epochs == 3 and [e.epoch for e in stop.value.history.epochs] == [1, 2]
    torch.testing.assert_close(stop.value.model.state_dict(), two_epochs.state_dict())
    torch.testing.assert_close(stop.value.history.optimizer_state, expected.optimizer_state)
    calls.clear()
    with pytest.raises(KeyboardInterrupt) as plain:  # not asked for: as before, no copies
        fit(train, 30, cfg, progress=False)
    assert not isinstance(plain.value, Interrupted)
