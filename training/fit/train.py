"""Training loop and model files.

    python -m training train --train data/demo/train.tsv --test data/demo/test.tsv --out runs/demo

A model directory holds model.pt (format version, config, item vocabulary, popularity,
weights, metadata: all a reader needs to rebuild the model; and, since incremental updates,
the optimiser state, so training can continue where it stopped) and config.json for people.
Files without optimiser state still load (Trained.optimizer_state is None).
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data.batching import apply_step_to_hidden, first_batch_size, session_parallel
from ..data.logs import ItemVocab, Sessions, item_popularity
from ..data.sampling import SampleStore
from ..models.architectures import build_model
from ..models.gru import SessionModel
from . import distributed, fused, graphed
from .losses import compute_loss
from .optim import make_optimizer
from .threads import default_threads, usable_cpus

FORMAT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu or cuda ({err})") from err


@dataclass
class EpochStats:
    epoch: int
    loss: float  # mean per example
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / max(self.seconds, 1e-9)


@dataclass
class History:
    epochs: list[EpochStats] = field(default_factory=list)
    # the optimiser's state after the last epoch, by parameter name (see save_model)
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None


OptimizerState = dict[str, dict[str, torch.Tensor]]  # parameter name -> its state tensors


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an interruptible fit (or fit_hrnn, update): `model` is the model as it
    was after the last completed epoch, None when no epoch completed; `history` holds those
    epochs (and their optimiser state, where the fit keeps one); `n_epochs` is how many were
    planned. `result` is what the interrupted call would have returned, where it builds one
    (update's Updated)."""

    def __init__(self, model: nn.Module | None, history: History, n_epochs: int):
        super().__init__(f"interrupted after {len(history.epochs)} of {n_epochs} epochs")
        self.model, self.history, self.n_epochs = model, history, n_epochs
        self.result: Any = None


def snapshot(model: nn.Module, optimizer_state: OptimizerState | None, history: History):
    """CPU copies of the weights and optimiser state, with the epochs done: what a Ctrl-C in
    the next epoch hands back (the live tensors change with every step of it)."""
    copy = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
    weights = {name: copy(t) for name, t in model.state_dict().items()}
    state = optimizer_state and {
        name: {key: copy(value) for key, value in s.items()} for name, s in optimizer_state.items()
    }
    return weights, state, list(history.epochs)


def interrupted(model: nn.Module, last, n_epochs: int) -> Interrupted:
    """Interrupted with the model put back to `last` (a snapshot, or None: no epoch done)."""
    if last is None:
        return Interrupted(None, History(), n_epochs)
    weights, state, epochs = last
    model.load_state_dict(weights)  # copies into the model's own tensors, on its device
    return Interrupted(model.eval(), History(epochs, state), n_epochs)


class _GroupedOptimizer:
    """One optimiser per parameter group, so a p-RNN strategy can train some subnets and
    leave the others untouched (momentum included)."""

    def __init__(self, model: SessionModel, cfg: Config):
        groups = model.parameter_groups()
        self.optimizers = {
            name: make_optimizer(params, model, cfg.optimizer, cfg.learning_rate, cfg.momentum)
            for name, params in groups.items()
        }
        self.params = groups
        self.model = model

    def step(self, epoch: int, step: int) -> None:
        for name in self.model.active_groups(epoch, step):
            self.optimizers[name].step()

    def _torch_optimizers(self) -> list[torch.optim.Optimizer]:
        # SparseDenseAdam is a pair of torch optimisers; IndexedAdagrad is one itself
        return [o for opt in self.optimizers.values() for o in getattr(opt, "optimizers", [opt])]

    def state_by_name(self) -> OptimizerState:
        """Per-parameter state keyed by parameter name, not by position, so it survives a
        model whose item tables grew (training.fit.update). Plain numbers (SparseAdam's step)
        become 0-d tensors."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        return {
            names[id(p)]: {key: torch.as_tensor(value) for key, value in state.items()}
            for opt in self._torch_optimizers()
            for p, state in opt.state.items()
            if state
        }

    def load_state_by_name(self, saved: OptimizerState) -> None:
        """Restore what state_by_name() returned (copies); ValueError on a shape mismatch."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        for opt in self._torch_optimizers():
            for p in (p for group in opt.param_groups for p in group["params"]):
                for key, value in saved.get(names[id(p)], {}).items():
                    if value.dim() and value.shape != p.shape:
                        raise ValueError(
                            f"optimiser state {names[id(p)]}.{key} has shape "
                            f"{tuple(value.shape)}, the parameter {tuple(p.shape)}"
                        )
                    opt.state[p][key] = _restored(key, value, p.device)


def _restored(key: str, value: torch.Tensor, device: torch.device) -> Any:
    if key == "step":  # torch keeps step counters on the CPU; SparseAdam's is an int
        return value.clone() if value.is_floating_point() else int(value)
    return value.to(device, copy=True)


def fit(
    train: Sessions,
    n_items: int,
    cfg: Config,
    progress: bool = True,
    model: nn.Module | None = None,
    optimizer_state: OptimizerState | None = None,
    on_epoch: Callable[[EpochStats, nn.Module], None] | None = None,
    interruptible: bool = False,
) -> tuple[nn.Module, History]:
    """Train with session-parallel mini-batches and sampled negatives; returns the model in
    eval mode and per-epoch statistics with the final optimiser state.

    `model` continues training a given model; `optimizer_state` (History.optimizer_state of
    an earlier run, or Trained.optimizer_state) continues its optimiser too. `on_epoch(stats,
    model)` runs after each epoch (training.evaluation.tune evaluates and prunes there); it may
    raise to stop training. `interruptible`: Ctrl-C raises Interrupted with the model of the
    last completed epoch (a CPU copy of the weights and optimiser state is kept after each)."""
    if cfg.architecture == "hrnn":  # session-parallel batches would never set the user state
        raise ValueError(
            "architecture=hrnn trains on user-parallel batches: use training.fit.hrnn_fit.fit_hrnn "
            "(`python -m training train --param architecture=hrnn` does)"
        )
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cpu":  # the quota and affinity, not the host's cores (threads.py)
        torch.set_num_threads(cfg.threads or default_threads(usable_cpus()))
    model = (model or build_model(n_items, cfg)).to(device)
    popularity = item_popularity(train, n_items)  # of all sessions, on every rank
    rank = distributed.current()
    sync = None
    if rank is not None:  # torchrun: this rank's share of the sessions, gradients averaged
        train = distributed.shard_sessions(train, rank.rank, rank.world_size)
        distributed.broadcast_parameters(model)
        distributed.mark_sparse_tables(model)
        sync = distributed.GradientSync(rank)
    store = None
    if cfg.n_sample > 0:
        seed = cfg.seed + (rank.rank if rank is not None else 0)  # each rank its own negatives
        gen = torch.Generator(device=device).manual_seed(seed)
        store = SampleStore(
            popularity, cfg.n_sample, cfg.sample_alpha, cfg.sample_store_size, device, gen
        )
        store.refill()  # the first draw before the epoch's clock starts, as the reference's
    log_pop = torch.log(torch.as_tensor(np.maximum(popularity, 1), dtype=torch.float32)).to(device)
    use_logq = cfg.loss == "cross-entropy" and cfg.logq > 0
    optimizer = _GroupedOptimizer(model, cfg)
    if optimizer_state:
        optimizer.load_state_by_name(optimizer_state)
    items = torch.as_tensor(np.array(train.items, dtype=np.int64), device=device)
    n_epochs = model.n_epochs_total(cfg)
    history = History()
    model.train()
    last = None  # snapshot() after the last completed epoch, when interruptible
    try:
        for epoch in range(n_epochs):
            stats = _run_epoch(
                model,
                optimizer,
                items,
                train.offsets,
                cfg,
                store,
                log_pop if use_logq else None,
                epoch,
                progress and (rank is None or rank.is_main),
                device,
                sync,
            )
            history.epochs.append(stats)
            if not np.isfinite(stats.loss):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: the loss became {stats.loss}; lower learning_rate or "
                    "check the data"
                )
            if on_epoch is not None:
                on_epoch(stats, model)
                model.train()  # the callback may have evaluated the model
            if interruptible and epoch + 1 < n_epochs:  # after the last one, fit returns it
                last = snapshot(model, optimizer.state_by_name(), history)
    except KeyboardInterrupt:
        if not interruptible:
            raise
        raise interrupted(model, last, n_epochs) from None
    model.eval()
    history.optimizer_state = optimizer.state_by_name()
    return model, history


def _run_epoch(
    model, optimizer, items, offsets, cfg, store, log_pop, epoch, progress, device, sync=None
):
    hidden = model.init_hidden(first_batch_size(offsets, cfg.batch_size), device)
    step_fn, idle_fn = _step_function(model, optimizer, cfg, epoch, sync)
    total_loss = torch.zeros((), device=device)
    events = 0
    started = time.perf_counter()
    n_events = int(np.sum(np.maximum(np.diff(offsets) - 1, 0)))
    bar = tqdm(
        total=n_events,
        desc=f"epoch {epoch + 1}",
        unit="ev",
        disable=not progress,
        mininterval=1.0,
        leave=True,
    )
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    # logQ correction per item, as targets and as sampled negatives: two lookups a step
    log_q_positive = None if log_pop is None else log_pop * cfg.logq
    log_q_sampled = None if log_pop is None else log_q_positive * cfg.sample_alpha
    try:
        for i, step in enumerate(session_parallel(items, offsets, cfg.batch_size, device)):
            hidden = apply_step_to_hidden(step, hidden)
            batch = len(step.inputs)
            if store is None and batch < 2:
                break  # no negatives left: the reference stops here too
            sample = None if store is None else store.get()
            targets = step.targets if sample is None else torch.cat([step.targets, sample])
            log_q = None
            if log_q_positive is not None:
                log_q = log_q_positive.index_select(0, step.targets)
                if sample is not None:  # sampled negatives were drawn with popularity**alpha
                    log_q = torch.cat([log_q, log_q_sampled.index_select(0, sample)])
            loss, hidden = step_fn(step.inputs, targets, hidden, log_q, i)
            total_loss += loss
            events += batch
            if i % 200 == 0:
                bar.update(events - bar.n)
                loss_so_far = total_loss.item() / max(events, 1)
                bar.set_postfix(_postfix(loss_so_far, threads), refresh=False)
    except KeyboardInterrupt:
        bar.close()  # ends the bar's line before the Ctrl-C is reported
        raise
    if sync is not None:  # join the other ranks' steps until every rank is done
        while idle_fn():
            pass
    seconds = time.perf_counter() - started
    bar.update(events - bar.n)
    loss_sum = total_loss.item()
    if sync is not None:  # the epoch's figures over all ranks, the same on each
        loss_sum, events = distributed.all_sum([loss_sum, float(events)], device)
        events = int(events)
    mean_loss = loss_sum / max(events, 1)
    bar.set_postfix({**_postfix(mean_loss, threads), "ev_s": f"{events / seconds:,.0f}"})
    bar.close()
    return EpochStats(epoch + 1, mean_loss, events, seconds)


def _postfix(loss: float, threads: int) -> dict[str, str]:
    """The progress line's figures; threads=N says how many CPU threads a step may use."""
    return {"loss": f"{loss:.4f}", **({"threads": str(threads)} if threads else {})}


def _step_function(model, optimizer, cfg: Config, epoch: int, sync=None):
    """(step, idle): step(inputs, targets, hidden, log_q, step index) -> (loss summed over
    the batch, new hidden); idle() joins the other ranks' gradient averaging without data
    and says whether any rank still had some. Plain GRU4Rec with Adagrad takes the
    hand-written fused step; other models and Adam go through autograd."""
    (only,) = optimizer.optimizers.values() if len(optimizer.optimizers) == 1 else (None,)
    if fused.supports(model, only, cfg):
        fused_step = fused.FusedStep(model, only, cfg, sync)
        on_gpu = model.Wy.weight.device.type == "cuda"
        if on_gpu and cfg.cuda_graph and sync is None:
            return _graphed_step_function(model, only, cfg, fused_step), fused_step.idle
        return (
            lambda inputs, targets, hidden, log_q, i: fused_step(inputs, targets, hidden, log_q)
        ), fused_step.idle
    params = list(model.parameters())
    counter = [0]

    def autograd_step(inputs, targets, hidden, log_q, i):
        scores, hidden = model(inputs, hidden, targets)
        loss = compute_loss(cfg.loss, scores, bpreg=cfg.bpreg, elu_param=cfg.elu_param, log_q=log_q)
        model.zero_grad(set_to_none=True)
        (loss / cfg.batch_size).backward()
        if sync is not None:
            sync.autograd_gradients(params, active=True)
        optimizer.step(epoch, i)
        counter[0] = i + 1
        return loss.detach(), [h.detach() for h in hidden]

    def autograd_idle() -> bool:
        model.zero_grad(set_to_none=True)
        if not sync.autograd_gradients(params, active=False):
            return False
        optimizer.step(epoch, counter[0])
        counter[0] += 1
        return True

    return autograd_step, autograd_idle


def _graphed_step_function(model, optimizer, cfg: Config, eager: fused.FusedStep):
    """Full-size steps (batch_size inputs, batch_size + n_sample targets) replay one CUDA
    graph, recorded at the first of them; the epoch's last, shrinking batches run eagerly."""
    static = graphed.StaticFusedStep(model, optimizer, cfg)
    graph: list[graphed.GraphedStep] = []

    def step(inputs, targets, hidden, log_q, i):
        n_targets = cfg.batch_size + cfg.n_sample if cfg.n_sample > 0 else cfg.batch_size
        if len(inputs) != cfg.batch_size or len(targets) != n_targets:
            return eager(inputs, targets, hidden, log_q)
        if not graph:
            graph.append(graphed.GraphedStep(static, cfg.batch_size, n_targets, log_q is not None))
        loss, outputs = graph[0](inputs, targets, hidden, log_q)
        return loss.clone(), [h.clone() for h in outputs]

    return step


@dataclass
class Trained:
    model: nn.Module
    config: Config
    vocab: ItemVocab
    popularity: np.ndarray
    meta: dict[str, Any]
    optimizer_state: OptimizerState | None = None  # None in files written before it was saved


def save_model(
    out_dir: str | Path,
    model: nn.Module,
    cfg: Config,
    vocab: ItemVocab,
    popularity: np.ndarray,
    meta: dict[str, Any] | None = None,
    optimizer_state: OptimizerState | None = None,
) -> Path:
    """Write model.pt and config.json to out_dir. `optimizer_state` (History.optimizer_state)
    is kept when given, so `python -m training update` can continue the optimiser."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    payload = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "n_items": len(vocab),
        "item_ids": [str(i) for i in vocab.ids],
        "popularity": torch.as_tensor(popularity, dtype=torch.int64),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.loads(json.dumps(meta)),  # keep it plain data
    }
    if optimizer_state is not None:
        payload["optimizer"] = {
            name: {key: value.detach().cpu() for key, value in state.items()}
            for name, state in optimizer_state.items()
        }
    # written beside and moved in: a run killed while saving leaves the old model whole
    partial = out / "model.pt.partial"
    torch.save(payload, partial)
    os.replace(partial, out / "model.pt")
    readable = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "n_items": len(vocab)}
    (out / "config.json").write_text(json.dumps({**readable, "meta": meta}, indent=2) + "\n")
    return out


def load_model(model_dir: str | Path, device: str = "cpu") -> Trained:
    path = Path(model_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; train a model with `python -m training train`")
    try:
        payload = torch.load(path, map_location=resolve_device(device), weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path} cannot be read ({err}); it is cut short or not a model file: copy it "
            "again, or train the model again"
        ) from err
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model format {payload.get('format_version')} is not {FORMAT_VERSION}"
        )
    # files from before bloom_item_step summed an item's Bloom rows plainly
    cfg = Config.from_dict({"bloom_item_step": False, **payload["config"]})
    model = build_model(payload["n_items"], cfg, payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return Trained(
        model=model,
        config=cfg,
        vocab=ItemVocab(payload["item_ids"]),
        popularity=payload["popularity"].numpy(),
        meta=payload["meta"],
        optimizer_state=payload.get("optimizer"),
    )
