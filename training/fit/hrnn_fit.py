"""Training HRNN with user-parallel mini-batches (training.data.user_batching), GRU4Rec's losses
and its shared popularity-sampled negatives.

    plan = UserSessions.from_events(train_events, vocab)
    model, history = fit_hrnn(plan, len(vocab), Config(architecture="hrnn", loss="top1-max"))

The step goes through autograd (fused.FusedStep is written for GRU4Rec's graph alone). As in
the reference (mquad/hgru4rec), gradients stop at the step boundary: the user GRU and the
initialisation layer learn from the first prediction of each session that they start (its
author: no BPTT, "sequences in recommender systems are rather short and BPTT didn't pay off
the additional complexity", mquad/hgru4rec issue #3; session-long BPTT gained nothing on
training.data.users either). The hand-over reads the ended session's last click first
(UserStep.last_click), so the user GRU learns from the state the service hands it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.sampling import SampleStore
from ..data.user_batching import UserSessions, UserStep, user_parallel
from ..models.architectures import build_model
from ..models.hrnn import HRNN
from . import distributed
from .losses import compute_loss
from .optim import make_optimizer
from .threads import default_threads, usable_cpus
from .train import EpochStats, History, interrupted, resolve_device, snapshot


def keep_rows(hidden: list[torch.Tensor], keep: torch.Tensor | None) -> list[torch.Tensor]:
    """The slots that go on when the batch shrank; hidden states (B, H) -> (B', H)."""
    if keep is None:
        return hidden
    keep = keep.to(hidden[0].device)
    return [h.index_select(0, keep) for h in hidden]


def fit_hrnn(
    train: UserSessions,
    n_items: int,
    cfg: Config,
    progress: bool = True,
    interruptible: bool = False,
) -> tuple[HRNN, History]:
    """Train an HRNN (cfg.architecture must be "hrnn") for cfg.n_epochs passes over the
    users; returns the model in eval mode and per-epoch statistics. Raises ValueError for
    another architecture and FloatingPointError when the loss diverges. `interruptible`:
    Ctrl-C raises train.Interrupted with the model of the last completed epoch."""
    if cfg.architecture != "hrnn":
        raise ValueError(f"fit_hrnn trains architecture=hrnn, not {cfg.architecture}")
    if distributed.current() is not None:  # each rank would train on every user, alone
        raise ValueError(
            "architecture=hrnn trains in one process: its user-parallel batches are not "
            "shared out between ranks; run it without torchrun"
        )
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or default_threads(usable_cpus()))
    model = build_model(n_items, cfg).to(device)
    assert isinstance(model, HRNN)
    popularity = np.bincount(train.items, minlength=n_items)
    store = None
    if cfg.n_sample > 0:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        store = SampleStore(
            popularity, cfg.n_sample, cfg.sample_alpha, cfg.sample_store_size, device, gen
        )
    log_q = None
    if cfg.loss == "cross-entropy" and cfg.logq > 0:
        log_pop = np.log(np.maximum(popularity, 1)).astype(np.float32)
        log_q = torch.from_numpy(log_pop).to(device) * cfg.logq
    optimizer = make_optimizer(
        model.parameters(), model, cfg.optimizer, cfg.learning_rate, cfg.momentum
    )
    history = History()
    model.train()
    last = None  # snapshot() after the last completed epoch, when interruptible
    try:
        for epoch in range(cfg.n_epochs):
            stats = _run_epoch(model, optimizer, train, cfg, store, log_q, epoch, progress, device)
            history.epochs.append(stats)
            if not np.isfinite(stats.loss):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: the loss became {stats.loss}; lower learning_rate"
                )
            if interruptible and epoch + 1 < cfg.n_epochs:  # after the last one, it returns
                last = snapshot(model, None, history)
    except KeyboardInterrupt:
        if not interruptible:
            raise
        raise interrupted(model, last, cfg.n_epochs) from None
    return model.eval(), history


def _run_epoch(model, optimizer, train, cfg, store, log_q, epoch, progress, device) -> EpochStats:
    total, events, started = torch.zeros((), device=device), 0, time.perf_counter()
    n_events = int(np.maximum(np.diff(train.offsets) - 1, 0).sum())
    bar = tqdm(total=n_events, desc=f"epoch {epoch + 1}", unit="ev", disable=not progress)
    hidden: list[torch.Tensor] | None = None
    try:
        for i, step in enumerate(user_parallel(train, cfg.batch_size)):
            if hidden is None:
                hidden = model.init_hidden(len(step.inputs), device)
            if store is None and len(step.inputs) < 2:
                break  # no negatives left, as in GRU4Rec's training
            loss, hidden = _train_step(model, optimizer, step, hidden, cfg, store, log_q, device)
            total += loss
            events += len(step.inputs)
            if i % 200 == 0:
                bar.update(events - bar.n)
    except KeyboardInterrupt:
        bar.close()  # ends the bar's line before the Ctrl-C is reported
        raise
    bar.update(events - bar.n)
    bar.close()
    seconds = time.perf_counter() - started
    return EpochStats(epoch + 1, total.item() / max(events, 1), events, seconds)


def _train_step(
    model: HRNN,
    optimizer,
    step: UserStep,
    hidden: list[torch.Tensor],
    cfg: Config,
    store: SampleStore | None,
    log_q_all: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One update: hand the ended sessions over, score the targets and the shared negatives
    (B, B + n_sample), back-propagate the loss summed over the batch / batch_size."""
    hidden = keep_rows(hidden, step.keep)
    hidden = model.hand_over(hidden, step.new_session, step.new_user, step.last_click)
    inputs, targets = step.inputs.to(device), step.targets.to(device)
    if store is not None:
        targets = torch.cat([targets, store.get()])
    log_q = None if log_q_all is None else log_q_all.index_select(0, targets)
    if log_q is not None and store is not None:  # negatives were drawn by popularity**alpha
        log_q[len(inputs) :] *= cfg.sample_alpha
    scores, hidden = model(inputs, hidden, targets)
    loss = compute_loss(cfg.loss, scores, bpreg=cfg.bpreg, elu_param=cfg.elu_param, log_q=log_q)
    model.zero_grad(set_to_none=True)
    (loss / cfg.batch_size).backward()
    optimizer.step()
    return loss.detach(), [h.detach() for h in hidden]
