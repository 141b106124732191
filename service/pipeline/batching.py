"""Dynamic batching: calls that arrive together share one model run.

    batcher = Batcher(run, max_batch=64, max_wait_s=0.004, max_queue=512)
    await batcher.submit(job)      # returns once `run` has filled the job in
    Batcher(run, finish=answer_all) # and `answer_all` has taken the batch's jobs together
    Batcher(run, meanwhile=learn_all, finish=answer_all)  # learn_all while `run` works

One run is in flight at a time, in a worker thread. Calls that arrive meanwhile queue up
and form the next batch, so under load batches grow by themselves and at low load a call
waits for nobody. Under load (the batch before had more than one call) a batch that is not
yet full is held for more calls: until max_wait_s after its first call, or until no call
has arrived for QUIET_S, whichever comes first, both counted from the answer of the batch
before at the earliest. Fewer, larger runs cost the event loop less per call, and the
callers just answered are about to send their next calls (without the last rule a call
queued during a run went alone at once, and a batch of one costs the model nearly what a
batch of 30 does); a lone caller never waits, and a few callers wait only until they have
all come (measured by scripts/bench_service.py against max_wait_s=0). The knobs are the
ones Triton's dynamic batcher names: max_batch_size, max_queue_delay, and a bounded queue.

A full queue refuses at once (Overloaded -> RESOURCE_EXHAUSTED), so latency and memory stay
bounded under any load; a call whose deadline has passed by the time its batch forms is
dropped (DeadlineExpired) instead of run for nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

# a batch held to fill (max_wait_s) goes once no call has arrived for this long: 0.5 ms
# cut the batches at 32 callers short, before the calls on their way had come
QUIET_S = 0.001


class Overloaded(Exception):
    """The queue is full: the caller should back off or try another replica."""


class DeadlineExpired(Exception):
    """The call's deadline passed before its batch ran."""


class HasDeadline(Protocol):
    deadline: float  # time.monotonic() seconds


J = TypeVar("J", bound=HasDeadline)


class BatchStats:
    """Plain counters the metrics collector reads at scrape time (no per-call locking)."""

    def __init__(self) -> None:
        self.batches = 0
        self.calls = 0
        self.expired = 0
        self.refused = 0
        self.run_seconds = 0.0
        self.queue_seconds = 0.0
        self.batch_sizes: dict[int, int] = {}


class Batcher(Generic[J]):
    def __init__(
        self,
        run: Callable[[list[J]], None],
        max_batch: int = 64,
        max_wait_s: float = 0.004,
        max_queue: int = 512,
        stats: BatchStats | None = None,
        finish: Callable[[list[J]], None] | None = None,
        meanwhile: Callable[[list[J]], None] | None = None,
    ):
        self.run = run
        # called on the event loop with a batch's jobs while `run` works on them in the
        # thread (onnxruntime releases the GIL): work that needs the calls but not the
        # model's answer (the online layer learning their clicks) is off the calls' path
        self.meanwhile = meanwhile
        # called on the event loop with the batch's jobs whose callers still wait, once
        # `run` has filled them in and before their callers resume: stages that work on
        # the batch rather than the call (the online ranking). It runs before the next
        # batch is taken, so calls that arrive meanwhile join that one: handing the model
        # the next batch first (to overlap the two) left batches of ~2 calls in
        # scripts/bench_service.py, 822 calls/s against 1,935
        self.finish = finish
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self._queue: deque[tuple[J, asyncio.Future[None], float]] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._last_size = 0  # calls in the batch before: more than one means load
        self._answered_at = 0.0  # time.monotonic() when the batch before was answered
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, job: J) -> asyncio.Future[None]:
        """Queue a job; the future completes when it has run. Raises Overloaded at once."""
        if len(self._queue) >= self.max_queue or self._closing:
            self.stats.refused += 1
            raise Overloaded(
                f"{len(self._queue)} calls are waiting for the model; retry with backoff or "
                "on another replica"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append((job, future, time.monotonic()))
        self._wake.set()
        return future

    async def close(self) -> None:
        """Run what is queued, then stop the worker."""
        self._closing = True
        self._wake.set()
        await self._task
        self._executor.shutdown(wait=True)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_wait_s > 0 and self._last_size > 1:
                await self._fill()
            batch = self._take()
            if not batch:
                continue
            jobs = [job for job, _, _ in batch]
            self._last_size = len(jobs)
            started = time.monotonic()
            running = loop.run_in_executor(self._executor, self.run, jobs)
            try:
                failed = self._meanwhile(jobs)
                await running  # before a failure of meanwhile is raised: the thread is done
                if failed is not None:
                    raise failed
            except Exception as err:  # the model (or meanwhile) failed: every caller hears it
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self._account(batch, started, time.monotonic())
            self._complete(batch)
            self._answered_at = time.monotonic()

    async def _fill(self) -> None:
        """Hold the queue's batch until it is full, max_wait_s after its first call, or no
        call has arrived for QUIET_S (the callers that were coming have come: at 8 callers,
        waiting on for a ninth only made every call later), both from the answer of the
        batch before at the earliest. At 32 callers that took the batches of one to seven
        calls from a third of all batches to a fifth, and p99 from 29 to 25 ms."""
        deadline = max(self._queue[0][2], self._answered_at) + self.max_wait_s
        while len(self._queue) < self.max_batch:
            now = time.monotonic()
            quiet_until = max(self._queue[-1][2], self._answered_at) + QUIET_S
            if now >= deadline or now >= quiet_until:
                return
            await asyncio.sleep(min(deadline, quiet_until) - now)

    def _meanwhile(self, jobs: list[J]) -> Exception | None:
        """Run `meanwhile` on the batch; its failure, which is every caller's error."""
        if self.meanwhile is None:
            return None
        # a moment without the GIL, for the model's thread to take it and get into
        # onnxruntime (which releases it): without it the thread starts only once meanwhile
        # is done, and nothing overlaps (docs/service.md, "The pipeline")
        time.sleep(0)
        try:
            self.meanwhile(jobs)
        except Exception as err:
            return err
        return None

    def _complete(self, batch: list[tuple[J, asyncio.Future[None], float]]) -> None:
        """Finish the batch's live jobs together, then resume their callers; a failure of
        `finish` is every one of their callers' error."""
        live = [(job, future) for job, future, _ in batch if not future.done()]
        if self.finish is not None and live:
            try:
                self.finish([job for job, _ in live])
            except Exception as err:
                for _, future in live:
                    future.set_exception(err)
                return
        for _, future in live:
            future.set_result(None)

    def _take(self) -> list[tuple[J, asyncio.Future[None], float]]:
        """Up to max_batch live jobs from the front of the queue; expired ones are failed."""
        now = time.monotonic()
        batch = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            job, future, _ = item
            if future.done():  # the caller went away (cancelled, e.g. its deadline passed)
                self.stats.expired += 1
                continue
            if job.deadline <= now:
                self.stats.expired += 1
                future.set_exception(DeadlineExpired("the deadline passed while queued"))
                continue
            batch.append(item)
        return batch

    def _account(self, batch: list, started: float, finished: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.calls += len(batch)
        stats.run_seconds += finished - started
        stats.queue_seconds += sum(started - arrived for _, _, arrived in batch)
        stats.batch_sizes[len(batch)] = stats.batch_sizes.get(len(batch), 0) + 1
