"""Two learned user models that score the next item from the user and the last click, as
Scorers for user_evaluate.evaluate_users (torch):

* FM, a factorisation machine (Rendle, ICDM 2010) over three one-hot fields, the user, the
  last click and the candidate item: y(x) = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j,
  computed in O(k n) as 0.5 sum_f ((sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2). Trained
  pairwise (BPR loss) against a sampled negative candidate, as Rendle does for implicit data.
* NCF, NeuMF of He et al. (WWW 2017): a GMF branch (query vector * candidate vector,
  elementwise) and an MLP tower over the concatenated embeddings, joined by one output
  layer; here the query is the user *and* the last click (GMF: their embeddings summed, MLP:
  concatenated). Trained pointwise with log loss and 4 sampled negatives per click, as there.

A user unknown in training has the all-zero embedding (a padding row), so both still score
from the last click.

    fm = FMScorer.fit(train_plan, n_items)     # train_plan: user_batching.UserSessions
    print(evaluate_users(fm, test_plan))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.user_batching import UserSessions
from .user_evaluate import UserClickScorer


def fm_score(x: torch.Tensor, w0: torch.Tensor, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Rendle's O(k n) form of the FM: x (B, n) real features, w0 (), w (n,), V (n, k) -> (B,)."""
    xv = x @ V  # (B, k)
    pairwise = 0.5 * (xv.pow(2) - x.pow(2) @ V.pow(2)).sum(dim=1)
    return w0 + x @ w + pairwise


@dataclass(frozen=True)
class TrainParams:
    factors: int = 32
    epochs: int = 5
    batch: int = 512
    learning_rate: float = 0.005  # Adam
    weight_decay: float = 1e-6
    negatives: int = 4  # NCF's ratio; FM pairs each click with one negative per draw
    seed: int = 0


class FactorizationMachine(nn.Module):
    """FM over [user | last click | candidate] one-hot fields; row n_users = unknown user."""

    def __init__(self, n_users: int, n_items: int, factors: int):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        n = n_users + 1 + 2 * n_items
        self.w0 = nn.Parameter(torch.zeros(()))
        self.w = nn.Parameter(torch.zeros(n))
        self.V = nn.Parameter(torch.randn(n, factors) * 0.01)
        with torch.no_grad():  # the unknown user: no terms at all (and no click trains it)
            self.V[n_users] = 0.0

    def features(self, users, last, candidates) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three active feature indices; users of -1 map to the unknown-user row."""
        u = torch.where(users < 0, self.n_users, users)
        return u, self.n_users + 1 + last, self.n_users + 1 + self.n_items + candidates

    def forward(self, users, last, candidates) -> torch.Tensor:
        """int64 (B,) each -> y (B,): the FM on three ones, sum_{i<j} <v_i, v_j> directly."""
        u, l, c = self.features(users, last, candidates)
        vu, vl, vc = self.V[u], self.V[l], self.V[c]
        pairs = (vu * vl).sum(1) + (vu * vc).sum(1) + (vl * vc).sum(1)
        return self.w0 + self.w[u] + self.w[l] + self.w[c] + pairs

    def score_all(self, users: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B, n_items): y for every candidate, from the query's terms plus each item's."""
        u, l, _ = self.features(users, last, last)
        query = self.V[u] + self.V[l]  # (B, k)
        fixed = self.w0 + self.w[u] + self.w[l] + (self.V[u] * self.V[l]).sum(1)
        cand = slice(self.n_users + 1 + self.n_items, None)
        return fixed[:, None] + self.w[cand][None, :] + query @ self.V[cand].T


class NeuMF(nn.Module):
    """GMF + MLP (He et al. 2017) with the query (user, last click); padding user row."""

    def __init__(self, n_users: int, n_items: int, factors: int, tower=(64, 32, 16)):
        super().__init__()
        self.n_users = n_users
        self.user_g = nn.Embedding(n_users + 1, factors, padding_idx=n_users)
        self.last_g = nn.Embedding(n_items, factors)
        self.item_g = nn.Embedding(n_items, factors)
        self.user_m = nn.Embedding(n_users + 1, factors, padding_idx=n_users)
        self.last_m = nn.Embedding(n_items, factors)
        self.item_m = nn.Embedding(n_items, factors)
        sizes = (3 * factors, *tower)
        self.tower = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.out = nn.Linear(factors + tower[-1], 1)
        for table in (self.user_g, self.last_g, self.item_g, self.user_m, self.last_m, self.item_m):
            nn.init.normal_(table.weight, std=0.01)  # as the NCF paper
            if table.padding_idx is not None:
                table.weight.data[table.padding_idx] = 0.0

    def forward(self, users, last, candidates) -> torch.Tensor:
        """int64 (B,) each -> logits (B,) of "the candidate is the next click"."""
        u = torch.where(users < 0, self.n_users, users)
        gmf = (self.user_g(u) + self.last_g(last)) * self.item_g(candidates)
        h = torch.cat([self.user_m(u), self.last_m(last), self.item_m(candidates)], dim=1)
        for layer in self.tower:
            h = F.relu(layer(h))
        return self.out(torch.cat([gmf, h], dim=1)).squeeze(1)

    def score_all(self, users: torch.Tensor, last: torch.Tensor, rows: int = 64) -> torch.Tensor:
        """(B, n_items) logits; the first tower layer split by field, so the candidates'
        part (n_items, h1) is computed once; `rows` queries at a time bound the memory."""
        u = torch.where(users < 0, self.n_users, users)
        k = self.user_m.embedding_dim
        first = self.tower[0]
        W_u, W_l, W_c = first.weight.split(k, dim=1)
        cand_first = self.item_m.weight @ W_c.T  # (N, h1)
        query_first = self.user_m(u) @ W_u.T + self.last_m(last) @ W_l.T + first.bias  # (B, h1)
        w_gmf, w_mlp = self.out.weight[0].split([k, self.out.in_features - k])
        out = [cand_first.new_zeros(0, len(cand_first))]  # for a batch of no queries
        for at in range(0, len(u), rows):
            h = F.relu(query_first[at : at + rows, None, :] + cand_first[None])  # (b, N, h1)
            for layer in self.tower[1:]:
                h = F.relu(layer(h))
            query_g = self.user_g(u[at : at + rows]) + self.last_g(last[at : at + rows])
            gmf = (query_g * w_gmf) @ self.item_g.weight.T  # (b, N)
            out.append(gmf + h @ w_mlp + self.out.bias)
        return torch.cat(out)


class _TorchScorer(UserClickScorer):
    def __init__(self, model: nn.Module, user_ids: np.ndarray):
        self.model = model.eval()
        self.user_index = {str(u): i for i, u in enumerate(user_ids)}

    @torch.no_grad()
    def score_users(self, users: np.ndarray, last: np.ndarray) -> torch.Tensor:
        return self.model.score_all(torch.from_numpy(users), torch.from_numpy(last))


class FMScorer(_TorchScorer):
    @classmethod
    def fit(cls, train: UserSessions, n_items: int, params=TrainParams()) -> FMScorer:
        model = FactorizationMachine(train.n_users, n_items, params.factors)

        def loss(users, last, pos, neg):  # BPR: the click above a sampled item
            return -F.logsigmoid(model(users, last, pos) - model(users, last, neg)).mean()

        _train(model, loss, train, n_items, params, negatives=1)
        return cls(model, train.user_ids)


class NCFScorer(_TorchScorer):
    @classmethod
    def fit(cls, train: UserSessions, n_items: int, params=TrainParams()) -> NCFScorer:
        model = NeuMF(train.n_users, n_items, params.factors)

        def loss(users, last, pos, neg):  # log loss, the click 1 and its negatives 0
            k = neg.shape[1]
            logits = torch.cat([model(users, last, pos)[:, None]] + [
                model(users, last, neg[:, i])[:, None] for i in range(k)
            ], dim=1)  # fmt: skip
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            return F.binary_cross_entropy_with_logits(logits, labels)

        _train(model, loss, train, n_items, params, negatives=params.negatives)
        return cls(model, train.user_ids)


def _train(model, loss_fn, train: UserSessions, n_items, params: TrainParams, negatives: int):
    """Adam over the (user, last click, next click) transitions with uniform negatives."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    users, last, nxt = (torch.from_numpy(a) for a in train.transitions())
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    model.train()
    for _ in range(params.epochs):
        order = torch.from_numpy(rng.permutation(len(users)))
        for at in range(0, len(order), params.batch):
            b = order[at : at + params.batch]
            neg = torch.from_numpy(rng.integers(0, n_items, (len(b), negatives)))
            loss = loss_fn(users[b], last[b], nxt[b], neg if negatives > 1 else neg[:, 0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
