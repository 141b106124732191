"""The GRU4Rec ranking losses.

Every loss takes `scores` (B, M): row b scores the M output items of the mini-batch, whose
first B columns are the batch's targets (so row b's positive is column b, the diagonal)
and whose other columns are the shared sampled negatives. Each returns the *sum* over the
batch; the trainer divides by the configured batch size as the reference does.

Final activations: cross-entropy is a softmax; TOP1-max and BPR-max take an ELU (alpha =
`elu_param`, linear when 0) as in the Top-k gains paper; TOP1 and BPR take tanh as in the
2016 code. All are monotonic, so ranking uses the raw scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-24  # keeps log() finite, as in the reference


def _positive(scores: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(scores)[:, None]  # (B, 1)


def _negative_mask(scores: torch.Tensor) -> torch.Tensor:
    """1.0 everywhere but the diagonal (each row's own target), (B, M)."""
    mask = torch.ones_like(scores)
    mask.diagonal().zero_()
    return mask


def softmax_over_negatives(scores: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only; the target's weight is 0."""
    mask = _negative_mask(scores)
    masked = scores * mask
    e = torch.exp(masked - masked.max(dim=1, keepdim=True).values) * mask
    return e / e.sum(dim=1, keepdim=True)


def cross_entropy(scores: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over the M items. `log_q` (M,), if given, is subtracted from the
    scores first: the logQ correction for popularity-sampled negatives."""
    if log_q is not None:
        scores = scores - log_q[None, :]
    log_p = torch.log_softmax(scores, dim=1)
    return -torch.diagonal(log_p).sum()


def bpr_max(scores: torch.Tensor, bpreg: float, elu_param: float) -> torch.Tensor:
    """-log sum_j s_j sigmoid(r_i - r_j) + bpreg sum_j s_j r_j^2, s = softmax over negatives."""
    if elu_param > 0:
        scores = F.elu(scores, elu_param)
    weights = softmax_over_negatives(scores)
    pairwise = torch.sigmoid(_positive(scores) - scores)
    ranking = -torch.log((pairwise * weights).sum(dim=1) + EPS)
    regulariser = bpreg * (scores.pow(2) * weights).sum(dim=1)
    return (ranking + regulariser).sum()


def top1_max(scores: torch.Tensor, elu_param: float) -> torch.Tensor:
    """sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2)), s = softmax over negatives."""
    if elu_param > 0:
        scores = F.elu(scores, elu_param)
    weights = softmax_over_negatives(scores)
    terms = torch.sigmoid(scores - _positive(scores)) + torch.sigmoid(scores.pow(2))
    return (terms * weights).sum()


def bpr(scores: torch.Tensor) -> torch.Tensor:
    """Mean over negatives of -log sigmoid(r_i - r_j)."""
    scores = torch.tanh(scores)
    mask = _negative_mask(scores)
    terms = -F.logsigmoid(_positive(scores) - scores) * mask
    return (terms.sum(dim=1) / mask.sum(dim=1)).sum()


def top1(scores: torch.Tensor) -> torch.Tensor:
    """Mean over negatives of sigmoid(r_j - r_i) + sigmoid(r_j^2)."""
    scores = torch.tanh(scores)
    mask = _negative_mask(scores)
    terms = (torch.sigmoid(scores - _positive(scores)) + torch.sigmoid(scores.pow(2))) * mask
    return (terms.sum(dim=1) / mask.sum(dim=1)).sum()


def compute_loss(
    name: str,
    scores: torch.Tensor,
    *,
    bpreg: float = 1.0,
    elu_param: float = 0.5,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    if name == "cross-entropy":
        return cross_entropy(scores, log_q)
    if name == "bpr-max":
        return bpr_max(scores, bpreg, elu_param)
    if name == "top1-max":
        return top1_max(scores, elu_param)
    if name == "bpr":
        return bpr(scores)
    if name == "top1":
        return top1(scores)
    raise ValueError(f"unknown loss {name!r}")
