"""Users' sessions in time order, and user-parallel mini-batches for HRNN (Quadrana et al.
2017, section 3.3), in the spirit of batching.session_parallel.

B users run side by side, one slot each. Every step feeds each slot's current click and asks
for the next one. When a slot's session ends, its user's next session takes the slot
(`new_session`: the model feeds the ended session's last click, `last_click`, hands the
session's final state to the user GRU and starts the next session from its output); when
the user has no sessions left, the next unused user takes the slot (`new_user`: both states
start from zero). With no users left, the batch shrinks (`keep`). Sessions of fewer than
two clicks hold no example and are skipped.

A session's last click is only ever a target here (nothing follows it), so the state the
steps leave behind has not read it; `last_click` lets the hand-over read it first, as the
service does (it runs every click it gets, and hands over the state after the last one).

    plan = UserSessions.from_events(events, vocab)      # events with a UserId column
    for step in user_parallel(plan, batch_size=64):
        hidden = model.hand_over(keep_rows(hidden, step.keep), step.new_session,
                                 step.new_user, step.last_click)
        scores, hidden = model(step.inputs, hidden, step.targets)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .logs import ITEM, SESSION, TIME, USER, DataError, ItemVocab

SCORED = "_scored"  # column of from_events' frame: the session's targets count


@dataclass
class UserSessions:
    """Clicks grouped by user, each user's sessions in time order.

    items: int64 (n_events,); session s is items[offsets[s]:offsets[s + 1]].
    user_offsets: int64 (n_users + 1,); user u owns sessions user_offsets[u]:user_offsets[u+1].
    user_ids: object (n_users,), users ordered by the start of their first session.
    session_ids: object (n_sessions,).
    scored: bool (n_sessions,): whether the session's targets are evaluated (False for the
        history that only builds a user's state; all True for training data).
    """

    items: np.ndarray
    offsets: np.ndarray
    user_offsets: np.ndarray
    user_ids: np.ndarray
    session_ids: np.ndarray
    scored: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    def session_users(self) -> np.ndarray:
        """int64 (n_sessions,): the user index of each session."""
        return np.repeat(np.arange(self.n_users), np.diff(self.user_offsets))

    def event_users(self) -> np.ndarray:
        """int64 (n_events,): the user index of each click."""
        return np.repeat(self.session_users(), np.diff(self.offsets))

    def transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, click, next click), int64 (n,) each: every consecutive pair in a session."""
        users, items = self.event_users(), self.items
        follows = np.ones(len(items), dtype=bool)
        follows[self.offsets[1:] - 1] = False  # a session's last click has no next one
        follows[-1:] = False
        at = np.flatnonzero(follows)
        return users[at], items[at], items[at + 1]

    @classmethod
    def from_events(
        cls, df: pd.DataFrame, vocab: ItemVocab, unknown: str = "error", source: str = "data"
    ) -> UserSessions:
        """Events with SessionId, ItemId, Time and UserId (and optionally the boolean column
        SCORED, per click, the same within a session). unknown="drop" removes clicks on items
        outside `vocab`; "error" raises DataError. A session with an empty UserId is its
        own user (anonymous: no history). Raises DataError without a UserId column or when
        a session belongs to more than one user."""
        if USER not in df.columns:
            raise DataError(f"{source}: no {USER} column; name it with --user-key")
        idx, known = vocab.encode(df[ITEM].to_numpy())
        if not known.all():
            if unknown == "error":
                raise DataError(f"{source}: {int((~known).sum())} clicks on unknown items")
            df, idx = df[known], idx[known]
        users = df[USER].to_numpy(dtype=object)
        anonymous = users == ""
        if anonymous.any():  # a session without a user id: a user of one session, no history
            users = users.copy()
            users[anonymous] = "\0anonymous " + df[SESSION].to_numpy(dtype=str)[anonymous]
        frame = pd.DataFrame(
            {
                "u": users,
                "s": df[SESSION].to_numpy(),
                "t": df[TIME].to_numpy(),
                "i": idx,
                "scored": df[SCORED].to_numpy() if SCORED in df.columns else True,
            }
        )
        owners = frame.groupby("s")["u"].nunique()
        if (owners > 1).any():
            raise DataError(f"{source}: session {owners.index[owners > 1][0]!r} has several users")
        session_start = frame.groupby("s")["t"].transform("min")
        user_start = frame.groupby("u")["t"].transform("min")
        frame = frame.assign(us=user_start, ss=session_start)
        frame = frame.sort_values(["us", "u", "ss", "s", "t"], kind="stable")
        return cls._from_sorted(frame)

    @classmethod
    def _from_sorted(cls, frame: pd.DataFrame) -> UserSessions:
        sessions = frame["s"].to_numpy()
        starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]])
        offsets = np.r_[starts, len(frame)].astype(np.int64)
        users = frame["u"].to_numpy()[starts]
        user_starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        return cls(
            items=frame["i"].to_numpy(np.int64),
            offsets=offsets,
            user_offsets=np.r_[user_starts, len(starts)].astype(np.int64),
            user_ids=users[user_starts],
            session_ids=sessions[starts],
            scored=frame["scored"].to_numpy(bool)[starts],
        )


def with_history(
    test: pd.DataFrame,
    history: pd.DataFrame | None,
    source: str = "the test clicks",
    history_source: str = "the history",
) -> pd.DataFrame:
    """The test clicks (scored) after their users' clicks in `history` (not scored), as one
    frame for UserSessions.from_events; history of users absent from `test` is left out.
    Raises DataError when either has no UserId column (source, history_source name them)."""
    if USER not in test.columns:  # whose history is whose cannot be told without it
        raise DataError(
            f"{source}: no {USER} column, so no user's history can be found; name the user "
            "column with --user-key"
        )
    test = test.assign(**{SCORED: True})
    if history is None:
        return test
    if USER not in history.columns:
        raise DataError(f"{history_source}: no {USER} column; name it with --user-key")
    past = history[history[USER].isin(set(test[USER]))].assign(**{SCORED: False})
    past = past[~past[SESSION].isin(set(test[SESSION]))]  # a session is history or test
    return pd.concat([past, test], ignore_index=True)


@dataclass
class UserStep:
    inputs: torch.Tensor  # int64 (B,), the click each slot sees now
    targets: torch.Tensor  # int64 (B,), the click that follows it
    users: torch.Tensor  # int64 (B,), each slot's user (index into UserSessions.user_ids)
    scored: torch.Tensor  # bool (B,), whether the target counts in an evaluation
    returning: torch.Tensor  # bool (B,), whether the user had an earlier session
    position: torch.Tensor  # int64 (B,), the input's place in its session (0: the first click)
    keep: torch.Tensor | None = None  # int64: slots that go on, when the batch shrank
    new_session: torch.Tensor | None = None  # bool (B,): the user's next session starts now
    new_user: torch.Tensor | None = None  # bool (B,): another user takes the slot now
    # int64 (B,) with new_session: the ended session's last click where new_session (the
    # target of the slot's previous step), to be read before the hand-over; 0 elsewhere
    last_click: torch.Tensor | None = None


def user_parallel(plan: UserSessions, batch_size: int) -> Iterator[UserStep]:
    """Yield the steps of one pass over the users, in the order of plan.user_ids."""
    lengths = np.diff(plan.offsets)
    valid = np.flatnonzero(lengths >= 2)  # sessions with an example, still grouped by user
    owner = plan.session_users()[valid]
    first = np.searchsorted(owner, np.arange(plan.n_users))  # each user's first valid session
    last = np.searchsorted(owner, np.arange(plan.n_users), side="right") - 1
    users = np.flatnonzero(last >= first)  # users with at least one valid session
    if len(users) == 0:
        return
    n = min(batch_size, len(users))
    user, cur, stop = users[:n].copy(), first[users[:n]], last[users[:n]]
    pos, end = plan.offsets[valid[cur]], plan.offsets[valid[cur] + 1]
    next_user = n
    keep = new_session = new_user = last_click = None
    while True:
        yield UserStep(
            inputs=torch.from_numpy(plan.items[pos]),
            targets=torch.from_numpy(plan.items[pos + 1]),
            users=torch.from_numpy(user.copy()),
            scored=torch.from_numpy(plan.scored[valid[cur]]),
            returning=torch.from_numpy(cur > first[user]),
            position=torch.from_numpy(pos - plan.offsets[valid[cur]]),
            keep=None if keep is None else torch.from_numpy(keep),
            new_session=None if new_session is None else torch.from_numpy(new_session),
            new_user=None if new_user is None else torch.from_numpy(new_user),
            last_click=None if last_click is None else torch.from_numpy(last_click),
        )
        pos = pos + 1
        done = end - pos <= 1
        new_session = done & (cur < stop)
        last_click = np.where(new_session, plan.items[end - 1], 0)  # before `end` moves on
        cur = np.where(new_session, cur + 1, cur)
        refill = np.flatnonzero(done & ~new_session)[: len(users) - next_user]
        user[refill] = users[next_user : next_user + len(refill)]
        cur[refill], stop[refill] = first[user[refill]], last[user[refill]]
        next_user += len(refill)
        new_user = np.zeros(len(user), dtype=bool)
        new_user[refill] = True
        alive = ~done | new_session | new_user
        if not alive.any():
            return
        pos = np.where(done, plan.offsets[valid[cur]], pos)
        end = np.where(done, plan.offsets[valid[cur] + 1], end)
        keep = None if alive.all() else np.flatnonzero(alive)
        if keep is not None:
            user, cur, stop, pos, end = user[keep], cur[keep], stop[keep], pos[keep], end[keep]
            new_session, new_user = new_session[keep], new_user[keep]
            last_click = last_click[keep]
        new_session = new_session if new_session.any() else None
        last_click = None if new_session is None else last_click
        new_user = new_user if new_user.any() else None
