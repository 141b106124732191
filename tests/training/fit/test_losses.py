"""Each loss against a plain-Python computation of its formula on a small score matrix."""

import math

import pytest
import torch

from training.fit import losses

# 2 examples (targets on the diagonal) and 4 output items: 2 in-batch + 2 sampled
SCORES = [[0.5, -0.2, 1.0, 0.1], [0.3, 0.8, -0.4, 0.05]]  # no 0: ELU has a kink there


def sig(x):
    return 1 / (1 + math.exp(-x))


def elu(x, a):
    return x if x > 0 else a * (math.exp(x) - 1)


def neg_softmax(row, i):
    e = [math.exp(v) if j != i else 0.0 for j, v in enumerate(row)]
    return [v / sum(e) for v in e]


def t(rows):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def test_cross_entropy_is_negative_log_softmax_of_the_target():
    expected = sum(
        -math.log(math.exp(row[i]) / sum(math.exp(v) for v in row)) for i, row in enumerate(SCORES)
    )
    assert losses.cross_entropy(t(SCORES)).item() == pytest.approx(expected)


def test_cross_entropy_matches_torch_cross_entropy_with_diagonal_labels():
    scores = torch.randn(5, 9)
    reference = torch.nn.functional.cross_entropy(scores, torch.arange(5), reduction="sum")
    assert losses.cross_entropy(scores).item() == pytest.approx(reference.item(), rel=1e-5)


def test_logq_subtracts_the_correction_before_the_softmax():
    log_q = torch.tensor([0.1, 0.7, -0.3, 0.2], dtype=torch.float64)
    shifted = [[v - log_q[j].item() for j, v in enumerate(row)] for row in SCORES]
    assert losses.cross_entropy(t(SCORES), log_q).item() == pytest.approx(
        losses.cross_entropy(t(shifted)).item()
    )


@pytest.mark.parametrize("elu_param", [0.0, 0.5])
def test_bpr_max_matches_its_formula(elu_param):
    bpreg = 0.7
    expected = 0.0
    for i, raw in enumerate(SCORES):
        row = [elu(v, elu_param) for v in raw] if elu_param else raw
        w = neg_softmax(row, i)
        rank = sum(w[j] * sig(row[i] - row[j]) for j in range(len(row)))
        expected += -math.log(rank) + bpreg * sum(w[j] * row[j] ** 2 for j in range(len(row)))
    got = losses.bpr_max(t(SCORES), bpreg=bpreg, elu_param=elu_param).item()
    assert got == pytest.approx(expected)


def test_top1_max_matches_its_formula():
    expected = 0.0
    for i, raw in enumerate(SCORES):
        row = [elu(v, 0.5) for v in raw]
        w = neg_softmax(row, i)
        expected += sum(w[j] * (sig(row[j] - row[i]) + sig(row[j] ** 2)) for j in range(len(row)))
    assert losses.top1_max(t(SCORES), elu_param=0.5).item() == pytest.approx(expected)


def test_bpr_averages_over_negatives_only():
    expected = 0.0
    for i, raw in enumerate(SCORES):
        row = [math.tanh(v) for v in raw]
        negs = [j for j in range(len(row)) if j != i]
        expected += sum(-math.log(sig(row[i] - row[j])) for j in negs) / len(negs)
    assert losses.bpr(t(SCORES)).item() == pytest.approx(expected)


def test_top1_averages_over_negatives_only():
    expected = 0.0
    for i, raw in enumerate(SCORES):
        row = [math.tanh(v) for v in raw]
        negs = [j for j in range(len(row)) if j != i]
        expected += sum(sig(row[j] - row[i]) + sig(row[j] ** 2) for j in negs) / len(negs)
    assert losses.top1(t(SCORES)).item() == pytest.approx(expected)


LOG_Q = [0.1, 0.7, -0.3, 0.2]


def plain_loss(name: str, rows: list[list[float]]) -> float:
    """Each loss written out one score at a time (bpreg 0.7, elu_param 0.5, logQ as LOG_Q),
    independent of training.fit.losses."""
    total = 0.0
    for i, raw in enumerate(rows):
        if name == "cross-entropy":
            shifted = [v - LOG_Q[j] for j, v in enumerate(raw)]
            total += -shifted[i] + math.log(sum(math.exp(v) for v in shifted))
        elif name in ("bpr-max", "top1-max"):
            row = [elu(v, 0.5) for v in raw]
            w = neg_softmax(row, i)
            if name == "bpr-max":
                rank = sum(w[j] * sig(row[i] - row[j]) for j in range(len(row)))
                total += -math.log(rank) + 0.7 * sum(w[j] * row[j] ** 2 for j in range(len(row)))
            else:
                total += sum(
                    w[j] * (sig(row[j] - row[i]) + sig(row[j] ** 2)) for j in range(len(row))
                )
        else:
            row = [math.tanh(v) for v in raw]
            negs = [j for j in range(len(row)) if j != i]
            if name == "bpr":
                terms = [-math.log(sig(row[i] - row[j])) for j in negs]
            else:
                terms = [sig(row[j] - row[i]) + sig(row[j] ** 2) for j in negs]
            total += sum(terms) / len(negs)
    return total


ALL_LOSSES = ["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"]


def ours(name: str, scores: torch.Tensor) -> torch.Tensor:
    log_q = torch.tensor(LOG_Q, dtype=torch.float64) if name == "cross-entropy" else None
    return losses.compute_loss(name, scores, bpreg=0.7, elu_param=0.5, log_q=log_q)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_compute_loss_passes_its_parameters_and_equals_the_plain_formula(name):
    assert ours(name, t(SCORES)).item() == pytest.approx(plain_loss(name, SCORES), rel=1e-10)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradients_equal_central_differences_of_the_plain_formula(name):
    scores = t(SCORES)
    ours(name, scores).backward()
    step = 1e-6
    for b in range(2):
        for j in range(4):
            up = [row[:] for row in SCORES]
            down = [row[:] for row in SCORES]
            up[b][j] += step
            down[b][j] -= step
            numeric = (plain_loss(name, up) - plain_loss(name, down)) / (2 * step)
            assert scores.grad[b, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert scores.grad[0, 0] < 0 and scores.grad[1, 1] < 0  # raising a target lowers the loss


def test_logq_gradient_is_softmax_of_the_shifted_scores_minus_one_hot():
    scores = t(SCORES)
    log_q = torch.tensor(LOG_Q, dtype=torch.float64)
    losses.cross_entropy(scores, log_q).backward()
    for b, row in enumerate(SCORES):
        e = [math.exp(v - LOG_Q[j]) for j, v in enumerate(row)]
        expected = [v / sum(e) - (1.0 if j == b else 0.0) for j, v in enumerate(e)]
        assert scores.grad[b].tolist() == pytest.approx(expected, rel=1e-10)


def test_softmax_over_negatives_gives_the_target_no_weight():
    w = losses.softmax_over_negatives(torch.tensor(SCORES))
    assert torch.allclose(w.diagonal(), torch.zeros(2))
    assert torch.allclose(w.sum(dim=1), torch.ones(2))


def test_unknown_loss_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.compute_loss("hinge", torch.zeros(2, 2))
