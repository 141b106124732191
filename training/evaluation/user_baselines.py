"""Classic baselines for users' clicks, numpy, as Scorers for user_evaluate.evaluate_users
(full ranking, ties against the model):

* BPR-MF (Rendle et al., UAI 2009): x_ui = <p_u, q_i>; LearnBPR samples a clicked (u, i) and
  an item j the user never clicked and takes an SGD step on ln sigmoid(x_ui - x_uj) - reg *
  ||theta||^2. It scores the next item from the user alone; users unknown in training get
  the training popularity (it has nothing else for them).
* item2vec (Barkan and Koenigstein, 2016): skip-gram with negative sampling where a session
  is the "sentence" and every other click of it is the context; as a session baseline the
  next item is scored by the cosine similarity of its vector to the last click's (the last
  click itself excluded, as item-KNN does).

    bpr = BPRMF.fit(train_plan, n_items)            # train_plan: user_batching.UserSessions
    print(evaluate_users(bpr, test_plan))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.user_batching import UserSessions
from .user_evaluate import UserClickScorer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


@dataclass(frozen=True)
class BPRParams:
    factors: int = 32
    learning_rate: float = 0.05  # LearnBPR's alpha
    reg: float = 0.0025  # lambda on the user and both item factors (MyMediaLite's default)
    epochs: int = 20  # one epoch = as many draws as there are distinct (user, item) pairs
    batch: int = 256  # draws per vectorised step; 1 is Rendle's plain SGD
    init_std: float = 0.1
    seed: int = 0


def bpr_sgd_step(
    P: np.ndarray,
    Q: np.ndarray,
    users: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    lr: float,
    reg: float,
) -> float:
    """One LearnBPR update, in place, for draws (u, i, j): users, pos, neg int64 (n,).
    P (n_users, k), Q (n_items, k). With x = <p_u, q_i - q_j> and g = sigmoid(-x):
    p_u += lr (g (q_i - q_j) - reg p_u); q_i += lr (g p_u - reg q_i);
    q_j += lr (-g p_u - reg q_j). Returns the mean of -ln sigmoid(x) before the step."""
    pu, qi, qj = P[users], Q[pos], Q[neg]
    x = np.einsum("nk,nk->n", pu, qi - qj)
    g = _sigmoid(-x)[:, None]
    np.add.at(P, users, lr * (g * (qi - qj) - reg * pu))
    np.add.at(Q, pos, lr * (g * pu - reg * qi))
    np.add.at(Q, neg, lr * (-g * pu - reg * qj))
    return float(np.mean(np.logaddexp(0.0, -x)))


class BPRMF(UserClickScorer):
    """Scores every item by <p_u, q_i>; popularity for users unknown in training."""

    def __init__(self, P: np.ndarray, Q: np.ndarray, user_ids: np.ndarray, popularity):
        self.P, self.Q = P.astype(np.float32), Q.astype(np.float32)
        self.user_index = {str(u): i for i, u in enumerate(user_ids)}
        self.popularity = np.asarray(popularity, dtype=np.float32)

    @classmethod
    def fit(cls, train: UserSessions, n_items: int, params: BPRParams = BPRParams()) -> BPRMF:
        rng = np.random.default_rng(params.seed)
        pairs = np.unique(train.event_users() * n_items + train.items)  # distinct (u, i)
        users, items = pairs // n_items, pairs % n_items
        P = rng.normal(0.0, params.init_std, (train.n_users, params.factors))
        Q = rng.normal(0.0, params.init_std, (n_items, params.factors))
        for _ in range(params.epochs):
            draws = rng.integers(0, len(pairs), len(pairs))  # bootstrap, as LearnBPR
            for at in range(0, len(draws), params.batch):
                d = draws[at : at + params.batch]
                neg = _unclicked(rng, pairs, users[d], n_items)
                bpr_sgd_step(P, Q, users[d], items[d], neg, params.learning_rate, params.reg)
        popularity = np.bincount(train.items, minlength=n_items)
        return cls(P, Q, train.user_ids, popularity)

    def score_users(self, users: np.ndarray, last: np.ndarray) -> torch.Tensor:
        scores = self.P[np.maximum(users, 0)] @ self.Q.T  # (n, n_items)
        scores[users < 0] = self.popularity
        return torch.from_numpy(scores)


def _unclicked(rng: np.random.Generator, pairs: np.ndarray, users: np.ndarray, n_items: int):
    """An item each user never clicked, uniformly; `pairs` sorted user * n_items + item."""
    neg = rng.integers(0, n_items, len(users))
    for _ in range(20):  # redraw the few clicked ones; a user who clicked all keeps a repeat
        keys = users * n_items + neg
        clicked = pairs[np.minimum(np.searchsorted(pairs, keys), len(pairs) - 1)] == keys
        if not clicked.any():
            break
        neg[clicked] = rng.integers(0, n_items, int(clicked.sum()))
    return neg


@dataclass(frozen=True)
class Item2VecParams:
    dim: int = 64
    negatives: int = 5  # word2vec's default
    learning_rate: float = 0.025  # word2vec's skip-gram default, decayed linearly to ~0
    epochs: int = 5
    window: int = 0  # 0 = the whole session is the context, as item2vec; else +-window
    batch: int = 512
    noise_power: float = 0.75  # negatives drawn by count**0.75, as word2vec
    seed: int = 0


def item2vec_pairs(
    items: np.ndarray, offsets: np.ndarray, window: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(target, context) item indices of every ordered pair of distinct positions inside a
    session (within `window` positions when > 0), session by session, in position order."""
    targets, contexts = [], []
    for s in range(len(offsets) - 1):
        clicks = items[offsets[s] : offsets[s + 1]]
        i, j = np.nonzero(~np.eye(len(clicks), dtype=bool))
        if window > 0:
            near = np.abs(i - j) <= window
            i, j = i[near], j[near]
        targets.append(clicks[i])
        contexts.append(clicks[j])
    if not targets:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(targets), np.concatenate(contexts)


def sgns_step(
    W_in: np.ndarray,
    W_out: np.ndarray,
    targets: np.ndarray,
    contexts: np.ndarray,
    negatives: np.ndarray,
    lr: float,
) -> None:
    """One skip-gram negative-sampling ascent step, in place, on log sigmoid(v_t . u_c) +
    sum_n log sigmoid(-v_t . u_n). targets, contexts (B,), negatives (B, K); W_in: the item
    vectors v, W_out: the context vectors u, both (n_items, d)."""
    v, u_c, u_n = W_in[targets], W_out[contexts], W_out[negatives]  # (B,d) (B,d) (B,K,d)
    g_pos = 1.0 - _sigmoid(np.einsum("bd,bd->b", v, u_c))  # (B,)
    g_neg = -_sigmoid(np.einsum("bd,bkd->bk", v, u_n))  # (B, K)
    grad_v = g_pos[:, None] * u_c + np.einsum("bk,bkd->bd", g_neg, u_n)
    np.add.at(W_out, contexts, lr * g_pos[:, None] * v)
    np.add.at(W_out, negatives, lr * g_neg[..., None] * v[:, None, :])
    np.add.at(W_in, targets, lr * grad_v)


class Item2Vec(UserClickScorer):
    """Scores the next item by cosine similarity to the last click (itself excluded)."""

    def __init__(self, vectors: np.ndarray):
        self.user_index: dict[str, int] = {}  # item2vec reads the last click only
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    @classmethod
    def fit(
        cls, items: np.ndarray, offsets: np.ndarray, n_items: int, params=Item2VecParams()
    ) -> Item2Vec:
        """items, offsets: sessions as in data.Sessions (or UserSessions)."""
        rng = np.random.default_rng(params.seed)
        targets, contexts = item2vec_pairs(items, offsets, params.window)
        noise = np.bincount(items, minlength=n_items) ** params.noise_power
        noise_cdf = np.cumsum(noise / noise.sum())
        W_in = (rng.random((n_items, params.dim)) - 0.5) / params.dim  # word2vec's init
        W_out = np.zeros((n_items, params.dim))
        steps = params.epochs * len(targets)
        done = 0
        for _ in range(params.epochs):
            order = rng.permutation(len(targets))
            for at in range(0, len(order), params.batch):
                b = order[at : at + params.batch]
                u = rng.random((len(b), params.negatives))
                negatives = np.minimum(np.searchsorted(noise_cdf, u), n_items - 1)
                lr = params.learning_rate * max(1.0 - done / steps, 1e-4)
                sgns_step(W_in, W_out, targets[b], contexts[b], negatives, lr)
                done += len(b)
        return cls(W_in)

    def score_users(self, users: np.ndarray, last: np.ndarray) -> torch.Tensor:
        scores = self.unit[last] @ self.unit.T  # (n, n_items) cosine
        scores[np.arange(len(last)), last] = -1.0  # the lowest cosine: not the click itself
        return torch.from_numpy(scores)
