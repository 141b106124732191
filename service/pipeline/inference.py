"""Stage 3: the batched model run. Many calls' last clicks go through the graph together.

    jobs = [Job(state, prefix, last_item, want_k, want_scores), ...]
    run_jobs(model, jobs)      # fills job.before_last, job.after, job.top_*, job.scores

A job whose session state is not cached (a cold session) first feeds its earlier clicks
(`prefix`) in one prefix-graph run for all such jobs of the batch; then one step runs for
every job: the last click, the ranking (the graph's TopK) and the new state. Runs in a
worker thread: onnxruntime releases the GIL, so the event loop goes on decoding and
answering other calls meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime import ExportedModel


@dataclass(slots=True)
class Job:
    """One call's model work. Arrays are float32 (1, S) states and int64 indices."""

    state: np.ndarray  # (1, S) state to start from
    prefix: np.ndarray  # (p,) clicks to feed before the last one (p = 0 when cached)
    last: int  # the last known click, whose step produces the scores
    want_k: int  # top items to return (0: none, e.g. ScoreItems)
    want_scores: bool = False  # the full (N,) score row (ScoreItems)
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for it
    cache_hit: bool = False  # the state came from the session cache
    owner: int = 0  # whose start state it ran from (sessions.SessionState.owner)
    skipped: int = 0  # older clicks left out because the deadline was near
    # results
    before_last: np.ndarray | None = None  # (1, S)
    after: np.ndarray | None = None  # (1, S)
    top_items: np.ndarray | None = None  # (k,) best first
    top_scores: np.ndarray | None = None  # (k,)
    scores: np.ndarray | None = None  # (N,)


def run_jobs(model: ExportedModel, jobs: list[Job]) -> None:
    """Run every job's prefix (if any) and last step as one batch; fills the results."""
    states = np.concatenate([j.state for j in jobs])  # (B, S)
    cold = [i for i, j in enumerate(jobs) if len(j.prefix)]
    if cold:
        states[cold] = model.advance_many([jobs[i].prefix for i in cold], states[cold])
    items = np.fromiter((j.last for j in jobs), dtype=np.int64, count=len(jobs))
    k = max(j.want_k for j in jobs)
    want_scores = any(j.want_scores for j in jobs)
    top_scores, top_items, new_states, scores = model.step(items, states, max(k, 1), want_scores)
    for i, job in enumerate(jobs):
        job.before_last = states[i : i + 1]
        job.after = new_states[i : i + 1]
        if job.want_k:
            job.top_items = top_items[i, : job.want_k]
            job.top_scores = top_scores[i, : job.want_k]
        if job.want_scores and scores is not None:
            job.scores = scores[i]
