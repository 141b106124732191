import hashlib
import subprocess
import sys
from pathlib import Path
from struct import pack, unpack

import numpy as np
import pytest
import torch
import xxhash
from pybloom_live import BloomFilter

from training.config import Config
from training.data.logs import ItemVocab, Sessions
from training.data.synthetic import generate
from training.evaluate import GRUScorer, evaluate
from training.fit.losses import cross_entropy
from training.fit.train import fit, load_model, save_model
from training.models.bloom import (
    BloomGRU4Rec,
    BloomInputGRUCell,
    bloom_positions,
    recover_scores,
    resolve_bits,
)

ROOT = Path(__file__).resolve().parents[3]


def _filter_bits(key: object, capacity: int, error_rate: float) -> tuple[np.ndarray, int, int]:
    """The bits a real pybloom-live BloomFilter sets for one key, and its (m, k)."""
    bf = BloomFilter(capacity=capacity, error_rate=error_rate)
    bf.add(key)
    bits = np.flatnonzero(np.array(bf.bitarray.tolist(), dtype=bool))
    return bits, bf.num_bits, bf.num_slices


@pytest.mark.parametrize("capacity, error_rate", [(1000, 0.1), (50, 0.01), (100_000, 0.2)])
def test_positions_are_the_bits_a_pybloom_live_filter_sets(capacity, error_rate):
    keys = [0, 7, 123, "i00042", "ünïcode"]
    _, m, k = _filter_bits(keys[0], capacity, error_rate)
    table = bloom_positions(keys, m, k)
    for key, row in zip(keys, table, strict=True):
        bits, _, _ = _filter_bits(key, capacity, error_rate)
        assert sorted(row.tolist()) == bits.tolist()


def _positions_by_hand(key: str, m: int, k: int) -> list[int]:
    """pybloom-live's scheme written out: k slices of m/k bits; 2-byte chunks when a slice
    is under 2**15 bits; xxh128 when 16k bits of chunks fit in 128, else sha1/sha256/...;
    salt i = H(H(pack('I', i)).digest()), chunks of H(salt || key) modulo the slice size."""
    per_slice = m // k
    chunk, code = (2, "H") if per_slice < 1 << 15 else (4, "I")
    total = 8 * k * chunk
    hashfn = (
        xxhash.xxh128
        if total <= 128
        else hashlib.sha1
        if total <= 160
        else hashlib.sha256
        if total <= 256
        else hashlib.sha384
        if total <= 384
        else hashlib.sha512
    )
    per_digest = hashfn().digest_size // chunk
    out: list[int] = []
    salt_index = 0
    while len(out) < k:
        salt = hashfn(hashfn(pack("I", salt_index)).digest())
        h = salt.copy()
        h.update(key.encode("utf-8"))
        out.extend(v % per_slice for v in unpack(code * per_digest, h.digest()))
        salt_index += 1
    return [j * per_slice + v for j, v in enumerate(out[:k])]


@pytest.mark.parametrize("m, k", [(3000, 3), (100_000, 4), (40_000, 2), (2_004, 12)])
def test_positions_match_an_independent_implementation_of_the_hashing(m, k):
    keys = [str(i) for i in range(50)] + ["i00042"]
    expected = [_positions_by_hand(key, m, k) for key in keys]
    assert bloom_positions(keys, m, k).tolist() == expected


def test_positions_are_the_same_in_a_fresh_process():
    code = (
        "from training.models.bloom import bloom_positions;"
        "print(bloom_positions(range(200), 999, 3).ravel().tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"},
    ).stdout
    assert eval(out) == bloom_positions(range(200), 999, 3).ravel().tolist()


def test_every_item_has_one_distinct_position_per_slice():
    table = bloom_positions(range(5000), 600, 4)
    assert table.shape == (5000, 4)
    slices = table // 150
    assert (slices == np.arange(4)).all()  # hash j lands in slice j, so all k differ


@pytest.mark.parametrize(
    "bits, n_items, k, expected",
    [(0.25, 1000, 3, 249), (1.0, 1000, 4, 1000), (0.5, 999, 2, 500), (5000, 10**6, 3, 4998)],
)
def test_bits_are_a_ratio_up_to_one_and_a_count_above(bits, n_items, k, expected):
    assert resolve_bits(bits, n_items, k) == expected


def test_too_few_bits_for_the_hashes_is_refused_with_advice():
    with pytest.raises(ValueError, match="raise bloom_bits or lower bloom_hashes"):
        resolve_bits(0.001, 1000, 3)


def test_recovered_scores_are_sums_of_log_probabilities_at_the_positions():
    torch.manual_seed(0)
    table = torch.as_tensor(bloom_positions(range(300), 60, 3))
    log_probs = torch.log_softmax(torch.randn(5, 60), dim=1)
    multi_hot = torch.zeros(300, 60).scatter_(1, table, 1.0)  # each item's Bloom vector
    expected = log_probs @ multi_hot.T
    assert torch.allclose(recover_scores(log_probs, table), expected, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_output_equal_to_an_items_bloom_vector_ranks_that_item_first(k):
    n_items = 2000
    cfg = Config(layers=(8,), bloom_bits=0.25, bloom_hashes=k, bloom_on="output")
    model = BloomGRU4Rec(n_items, cfg)
    codes = [tuple(r) for r in model.item_positions.tolist()]  # sorted: slice j holds hash j
    items = range(0, n_items, 97)
    with torch.no_grad():
        model.Wy.weight.zero_()  # the output layer then emits exactly its bias
        for item in items:
            model.By.weight.zero_()
            model.By.weight[list(codes[item]), 0] = 30.0  # logits = 30 * Bloom vector of item
            scores = model.score(torch.zeros(1, 8))[0]
            first = set(np.flatnonzero((scores == scores.max()).numpy()).tolist())
            # ties only with items whose k bits are all the same (a full collision)
            assert first == {i for i, c in enumerate(codes) if c == codes[item]}


def test_bloom_input_cell_is_a_gru_cell_fed_the_multi_hot_vector():
    torch.manual_seed(0)
    m, hidden = 40, 6
    cell = BloomInputGRUCell(m, hidden)
    reference = torch.nn.GRUCell(m, hidden)
    with torch.no_grad():
        reference.weight_ih.copy_(cell.input_gates.weight.T)
        reference.weight_hh.copy_(cell.weight_hh)
        reference.bias_ih.copy_(cell.bias)
        reference.bias_hh.zero_()
    rows = torch.as_tensor(bloom_positions(range(5), m, 4))
    multi_hot = torch.zeros(5, m).scatter_(1, rows, 1.0)
    h = torch.randn(5, hidden)
    assert torch.allclose(cell(rows, h), reference(multi_hot, h), atol=1e-6)


@pytest.mark.parametrize("bloom_on", ["input", "output", "both"])
@pytest.mark.parametrize(
    "inputs",
    [{}, {"constrained_embedding": False}, {"constrained_embedding": False, "embedding": 5}],
)
def test_target_scores_are_the_matching_columns_of_the_full_scores(bloom_on, inputs):
    torch.manual_seed(0)
    cfg = Config(layers=(12, 7), bloom_bits=0.3, bloom_hashes=3, bloom_on=bloom_on, **inputs)
    model = BloomGRU4Rec(500, cfg).eval()
    items, targets = torch.tensor([3, 99, 499]), torch.tensor([0, 5, 5, 250, 499])
    hidden = [torch.randn(3, n) for n in cfg.layers]
    some, new_a = model(items, hidden, targets)
    full, new_b = model(items, hidden, None)
    assert some.shape == (3, 5) and full.shape == (3, 500)
    assert torch.allclose(some, full[:, targets], atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(new_a, new_b, strict=True))


def test_cross_entropy_training_skips_the_normaliser_without_changing_loss_or_gradients():
    """In training with cross-entropy the candidates' scores leave out -k * logsumexp(o),
    which is the same for every item of a row, so softmax over them is unchanged."""
    torch.manual_seed(0)
    model = BloomGRU4Rec(400, Config(layers=(16,), bloom_bits=0.3, bloom_hashes=3))
    inputs, targets = torch.tensor([1, 5, 7]), torch.tensor([1, 5, 7, 40, 300, 301])
    hidden = model.init_hidden(3)
    results = []
    for training in (True, False):
        model.train(training)
        scores, _ = model(inputs, hidden, targets)
        loss = cross_entropy(scores)
        grads = torch.autograd.grad(loss, [model.Wy.weight, model.By.weight])
        results.append((scores, loss, [g.to_dense() for g in grads]))
    (train_s, train_loss, train_g), (eval_s, eval_loss, eval_g) = results
    offset = train_s - eval_s
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-4)  # per row
    assert offset.abs().min() > 1.0  # the normaliser really was left out
    assert torch.allclose(train_loss, eval_loss, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(train_g, eval_g, strict=True))
    assert model.Wy.sparse  # so the optimiser touches only the candidates' rows


def test_compression_shrinks_the_item_tables_to_m_rows():
    n_items, layers = 10_000, (32,)
    for ratio in (1.0, 0.5, 0.125):
        model = BloomGRU4Rec(n_items, Config(layers=layers, bloom_bits=ratio, bloom_hashes=2))
        m = resolve_bits(ratio, n_items, 2)
        gru = 3 * (32 * 32 + 32 * 32 + 2 * 32)  # constrained: input is Wy's 32 columns
        assert sum(p.numel() for p in model.parameters()) == m * 33 + gru


def test_position_table_travels_with_the_saved_model(tmp_path):
    cfg = Config(layers=(8,), bloom_bits=0.5, bloom_hashes=3)
    model = BloomGRU4Rec(300, cfg, keys=[f"item{i}" for i in range(300)])
    vocab = ItemVocab([f"item{i}" for i in range(300)])
    save_model(tmp_path, model, cfg, vocab, np.ones(300, dtype=np.int64))
    loaded = load_model(tmp_path).model
    assert torch.equal(loaded.item_positions, model.item_positions)
    assert not torch.equal(loaded.item_positions, BloomGRU4Rec(300, cfg).item_positions)


@pytest.mark.slow
def test_a_trained_bloom_model_beats_popularity_ranking():
    cat = generate(n_items=800, n_sessions=4000, seed=1)
    vocab = ItemVocab(cat.item_ids)
    sessions = Sessions.from_events(cat.events, vocab)
    cut = int(sessions.n_sessions * 0.9)
    split = sessions.offsets[cut]
    train = Sessions(sessions.items[:split], sessions.offsets[: cut + 1], np.arange(cut))
    test = Sessions(
        sessions.items[split:], sessions.offsets[cut:] - split, np.arange(sessions.n_sessions - cut)
    )
    cfg = Config(layers=(48,), batch_size=32, n_sample=128, n_epochs=2, bloom_bits=0.25)
    model, _ = fit(train, len(vocab), cfg, progress=False)
    got = evaluate(GRUScorer(model), test, cutoffs=(20,))["recall@20"]
    popularity = np.bincount(train.items, minlength=len(vocab))
    top = set(np.argsort(-popularity)[:20].tolist())
    targets = np.concatenate([test.session(s)[1:] for s in range(test.n_sessions)])
    popular_recall = np.mean([t in top for t in targets])
    assert got > popular_recall + 0.05


@pytest.mark.parametrize("bloom_on", ["input", "output", "both"])
def test_the_onnx_export_scores_like_pytorch_from_item_indices_alone(tmp_path, bloom_on):
    from training.export import check_parity, export_model

    torch.manual_seed(0)
    cfg = Config(layers=(8, 5), bloom_bits=0.9, bloom_hashes=3, bloom_on=bloom_on)
    model = BloomGRU4Rec(200, cfg)
    # Items sharing all k bits tie exactly, and torch.topk orders ties arbitrarily; this
    # configuration has no such pair, and larger weights keep scores apart beyond float noise.
    assert len({tuple(r) for r in model.item_positions.tolist()}) == 200
    with torch.no_grad():
        model.Wy.weight.mul_(20.0)
    vocab = ItemVocab([f"i{i}" for i in range(200)])
    save_model(tmp_path / "m", model, cfg, vocab, np.ones(200, np.int64))
    export_dir = export_model(tmp_path / "m", tmp_path / "export")
    report = check_parity(tmp_path / "m", export_dir, n_sessions=8, seed=1)
    assert report["ok"], report


def _tiny_sessions(n_items: int, seed: int) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, 120)
    items = rng.integers(0, n_items, lengths.sum())
    return Sessions(items, np.concatenate([[0], np.cumsum(lengths)]), np.arange(len(lengths)))


@pytest.mark.parametrize("bloom_on", ["input", "output", "both"])
def test_item_step_starts_as_the_plain_sum(bloom_on):
    base = dict(layers=(6,), bloom_bits=0.5, bloom_hashes=3, bloom_on=bloom_on, embedding=0)
    for constrained in (True, False):
        models = []
        for item_step in (True, False):
            torch.manual_seed(3)
            cfg = Config(**base, constrained_embedding=constrained, bloom_item_step=item_step)
            models.append(BloomGRU4Rec(60, cfg).eval())
        inputs = torch.tensor([1, 7, 59])
        hidden = models[0].init_hidden(3)
        scaled, plain = (m(inputs, hidden)[0] for m in models)
        torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-5)
        assert float(models[0].row_scale) == pytest.approx(1 / 3)


def test_an_optimiser_step_moves_an_item_one_row_step_not_k():
    # Adagrad steps a row by about the learning rate whatever its gradient's size: the plain
    # sum of k rows moves an item's representation k row-steps; the 1/k-scaled sum, one.
    # The rest of the model gets the same gradients and the same update either way. (Exact
    # with a negligible epsilon; Adagrad's 1e-6 shortens steps of gradients below ~1e-3.)
    from training.fit.optim import IndexedAdagrad

    cfg = dict(layers=(8,), bloom_bits=0.5, bloom_hashes=4, bloom_on="both")
    inputs, targets = torch.tensor([1, 5, 7]), torch.tensor([1, 5, 7, 40, 55])
    moved, gru_updates = [], []
    for item_step in (True, False):
        torch.manual_seed(4)
        model = BloomGRU4Rec(60, Config(**cfg, bloom_item_step=item_step))
        before = [p.detach().clone() for p in model.parameters()]
        item_rows = model.item_positions[targets]  # (5, k)
        start = model.Wy.weight[item_rows].sum(dim=1) * model.row_scale
        optimizer = IndexedAdagrad(model.parameters(), lr=0.1, eps=1e-20)
        scores, _ = model(inputs, model.init_hidden(3), targets)
        cross_entropy(scores).backward()
        optimizer.step()
        end = model.Wy.weight[item_rows].sum(dim=1) * model.row_scale
        moved.append((end - start).detach())
        named = zip(model.named_parameters(), before, strict=True)
        gru = [(p - b) for (n, p), b in named if "cells" in n]
        gru_updates.append([g.detach() for g in gru])
    scaled, plain = moved
    torch.testing.assert_close(scaled * 4, plain, rtol=1e-3, atol=1e-4)
    assert plain.abs().max() > 0.1  # the items really moved
    for a, b in zip(*gru_updates, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_model_file_from_before_item_step_keeps_its_plain_sum(tmp_path):
    cfg = Config(layers=(6,), bloom_bits=0.5, bloom_hashes=3)
    model = BloomGRU4Rec(50, cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "row_scale"}
    state["Wy.weight"] = state["Wy.weight"] * float(model.row_scale)  # rows as a sum saw them
    old = BloomGRU4Rec(50, cfg)
    old.load_state_dict(state)
    assert float(old.row_scale) == 1.0
    inputs, hidden = torch.tensor([3, 4]), model.init_hidden(2)
    torch.testing.assert_close(old.eval()(inputs, hidden)[0], model(inputs, hidden)[0])
