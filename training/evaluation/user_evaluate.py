"""Evaluation with users' history: every scored click but a session's last predicts the next
one, ranked against all items with ties against the model (evaluate.rank_of_target), and the
same figures again over the targets of *returning* users (who had an earlier session), and
over their sessions' first targets alone (the click after the first: where the session has
shown least and the history can add most).

The plan (user_batching.with_history, then UserSessions.from_events) holds each test user's
earlier sessions from the history file, not scored, then their test sessions in time order.
An HRNN steps its user GRU through all of them, each session's state handed over after its
last click (as the service does); a session model (GRU4Rec) restarts from zero at every
session and is run on the scored sessions alone, so both are compared on the same targets;
the user baselines read the user and the last click.

    plan = UserSessions.from_events(with_history(test_events, train_events), vocab, "drop")
    result = evaluate_users(scorer_for(model), plan)   # {..., "returning": {...},
                                                       #  "returning_first": {...}}
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.user_batching import UserSessions, UserStep, user_parallel
from ..evaluate import metrics_from_ranks, rank_of_target
from ..fit.hrnn_fit import keep_rows
from ..models.hrnn import HRNN


class UserScorer(Protocol):
    """What evaluate_users drives, user-parallel."""

    def start(self, batch_size: int, user_ids: np.ndarray) -> None:
        """A new pass; user_ids (n_users,) names the plan's user indices in UserStep.users."""
        ...

    def advance(self, step: UserStep) -> torch.Tensor:
        """Apply keep / new_session / new_user, read step.inputs; scores (n_scored, n_items)
        for the next click of the slots where step.scored."""
        ...


class HRNNScorer:
    """An HRNN carrying each user's state through their history and test sessions."""

    def __init__(self, model: HRNN):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.hidden: list[torch.Tensor] = []

    def start(self, batch_size: int, user_ids: np.ndarray) -> None:
        self.hidden = self.model.init_hidden(batch_size, self.device)

    @torch.no_grad()
    def advance(self, step: UserStep) -> torch.Tensor:
        hidden = keep_rows(self.hidden, step.keep)
        hidden = self.model.hand_over(hidden, step.new_session, step.new_user, step.last_click)
        x, _, self.hidden = self.model.step(step.inputs.to(self.device), hidden)
        return self.model.score(x[step.scored.to(self.device)])


class SessionScorer:
    """A session model (forward(inputs, hidden, None) -> (scores, hidden)) that ignores the
    history: its state restarts from zero with every session, and only scored sessions run."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.hidden: list[torch.Tensor] = []

    def start(self, batch_size: int, user_ids: np.ndarray) -> None:
        self.hidden = self.model.init_hidden(batch_size, self.device)

    @torch.no_grad()
    def advance(self, step: UserStep) -> torch.Tensor:
        hidden = keep_rows(self.hidden, step.keep)
        starts = _either(step.new_session, step.new_user)
        if starts is not None:
            hidden = [h.masked_fill(starts.to(self.device)[:, None], 0.0) for h in hidden]
        rows = torch.nonzero(step.scored).flatten().to(self.device)
        scores, new = self.model(step.inputs.to(self.device)[rows], [h[rows] for h in hidden])
        for h, h_new in zip(hidden, new, strict=True):
            h[rows] = h_new
        self.hidden = hidden
        return scores


def _either(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return a | b


class UserClickScorer:
    """Base of the user baselines: scores from (user, last click) alone. Subclasses set
    `user_index` ({user id: row}) and implement score_users(users (n,), last (n,)) ->
    (n, n_items) float32, where users is -1 for a user unknown in training."""

    user_index: dict[str, int]

    def score_users(self, users: np.ndarray, last: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def start(self, batch_size: int, user_ids: np.ndarray) -> None:
        self.plan_users = np.fromiter(
            (self.user_index.get(str(u), -1) for u in user_ids), np.int64, len(user_ids)
        )

    def advance(self, step: UserStep) -> torch.Tensor:
        scored = step.scored.numpy()
        users = self.plan_users[step.users.numpy()[scored]]
        return self.score_users(users, step.inputs.numpy()[scored])


def scorer_for(model: nn.Module) -> UserScorer:
    """HRNNScorer for an HRNN, SessionScorer for any other session model."""
    return HRNNScorer(model) if isinstance(model, HRNN) else SessionScorer(model)


def collect_user_ranks(
    scorer: UserScorer,
    plan: UserSessions,
    batch_size: int = 512,
    mode: str = "conservative",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranks, returning, positions): the rank of every scored target, whether its user is
    returning, and the place in its session of the click before it (0: the first), in the
    order the user-parallel pass meets them."""
    ranks, returning, positions = [], [], []
    n_events = int(np.maximum(np.diff(plan.offsets) - 1, 0).sum())
    started = False
    with tqdm(total=n_events, desc="evaluate", unit="ev", disable=not progress) as bar:
        for step in user_parallel(plan, batch_size):
            if not started:
                scorer.start(len(step.inputs), plan.user_ids)
                started = True
            scores = scorer.advance(step)
            scored = step.scored
            if scored.any():
                targets = step.targets[scored].to(scores.device)
                ranks.append(rank_of_target(scores, targets, mode).cpu().numpy())
                returning.append(step.returning[scored].numpy())
                positions.append(step.position[scored].numpy())
            bar.update(len(step.inputs))
    if not ranks:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return np.concatenate(ranks), np.concatenate(returning), np.concatenate(positions)


def evaluate_users(
    scorer: UserScorer,
    plan: UserSessions,
    cutoffs=(1, 5, 10, 20),
    batch_size: int = 512,
    mode: str = "conservative",
    progress: bool = False,
) -> dict[str, Any]:
    """{"recall@20": ..., "mrr@20": ..., "n_events": ..., "returning": {the same over the
    targets of users with an earlier session}, "returning_first": {the same over those of
    them that follow a session's first click}} over the plan's scored sessions."""
    ranks, returning, positions = collect_user_ranks(scorer, plan, batch_size, mode, progress)
    back, first = ranks[returning], ranks[returning & (positions == 0)]
    return {
        **metrics_from_ranks(ranks, cutoffs),
        "n_events": int(len(ranks)),
        "returning": {**metrics_from_ranks(back, cutoffs), "n_events": int(len(back))},
        "returning_first": {**metrics_from_ranks(first, cutoffs), "n_events": int(len(first))},
    }
