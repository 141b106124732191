"""The batcher's hooks: meanwhile runs while the model's thread works on the same batch,
finish before the callers resume; a failure of either reaches every caller."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from service.pipeline.batching import Batcher


@dataclass
class Job:
    n: int
    deadline: float = float("inf")


def test_meanwhile_runs_while_the_model_works_and_finish_before_the_callers():
    events: list[str] = []
    learnt = threading.Event()

    def run(jobs):  # the model's thread: waits for meanwhile, so the two must overlap
        assert learnt.wait(5), "meanwhile did not run while the model's thread worked"
        events.append(f"run {[j.n for j in jobs]}")

    def meanwhile(jobs):
        events.append(f"meanwhile {[j.n for j in jobs]}")
        learnt.set()

    async def caller(batcher, n):
        await batcher.submit(Job(n))
        events.append(f"caller {n}")

    async def main():
        batcher = Batcher(run, meanwhile=meanwhile,
                          finish=lambda jobs: events.append("finish"))  # fmt: skip
        await asyncio.gather(caller(batcher, 1), caller(batcher, 2))
        await batcher.close()

    asyncio.run(main())
    assert events == ["meanwhile [1, 2]", "run [1, 2]", "finish", "caller 1", "caller 2"]


def test_a_failure_of_meanwhile_reaches_every_caller_once_the_model_is_done():
    done = threading.Event()

    def run(jobs):
        done.wait(0.05)
        done.set()

    def meanwhile(jobs):
        raise RuntimeError("learning failed")

    async def main():
        batcher = Batcher(run, meanwhile=meanwhile, finish=lambda jobs: None)
        results = await asyncio.gather(batcher.submit(Job(1)), batcher.submit(Job(2)),
                                       return_exceptions=True)  # fmt: skip
        assert done.is_set()  # the thread had finished before the callers heard
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert [str(r) for r in results] == ["learning failed", "learning failed"]


def _sizes_of(batches):
    def run(jobs):
        batches.append(len(jobs))

    return run


def test_under_load_a_batch_waits_for_the_calls_on_their_way(monkeypatch):
    """After a batch of two, the next call's batch is held (QUIET_S made long here) until
    max_wait_s, so a call 50 ms behind it joins it; without the wait it would run alone."""
    import service.pipeline.batching as batching

    monkeypatch.setattr(batching, "QUIET_S", 5.0)
    batches: list[int] = []

    async def main(wait_s):
        batcher = Batcher(_sizes_of(batches), max_wait_s=wait_s)
        await asyncio.gather(batcher.submit(Job(1)), batcher.submit(Job(2)))
        first = batcher.submit(Job(3))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, batcher.submit(Job(4)))
        await batcher.close()

    asyncio.run(main(0.3))
    assert batches == [2, 2]
    batches.clear()
    asyncio.run(main(0.0))
    assert batches == [2, 1, 1]


def test_a_lone_caller_never_waits_and_a_held_batch_goes_once_calls_stop_coming(monkeypatch):
    """max_wait_s of 60 s: a first call (no load seen) and a call after a batch of two with
    nobody behind it (gone after QUIET_S) both run at once, not a minute later."""
    import service.pipeline.batching as batching

    monkeypatch.setattr(batching, "QUIET_S", 0.01)
    batches: list[int] = []

    async def main():
        batcher = Batcher(_sizes_of(batches), max_wait_s=60.0)
        await asyncio.wait_for(batcher.submit(Job(1)), 10)  # lone: the batch before had none
        await asyncio.gather(batcher.submit(Job(2)), batcher.submit(Job(3)))
        await asyncio.wait_for(batcher.submit(Job(4)), 10)  # held, then quiet: goes
        await batcher.close()

    asyncio.run(main())
    assert batches == [1, 2, 1]


def test_a_call_queued_during_a_run_waits_for_the_callers_just_answered(monkeypatch):
    """A call that arrives while a batch of two runs has waited past max_wait_s and QUIET_S
    by the time that batch is answered; its batch is held from the answer on, so the two
    callers' next calls join it instead of running as a batch of their own after it."""
    import time

    import service.pipeline.batching as batching

    monkeypatch.setattr(batching, "QUIET_S", 0.02)
    batches: list[int] = []

    def slow_run(jobs):
        batches.append(len(jobs))
        time.sleep(0.1)

    async def main():
        batcher = Batcher(slow_run, max_wait_s=0.05)

        async def caller(first, then):
            await batcher.submit(Job(first))
            await batcher.submit(Job(then))

        async def during_the_run():
            await asyncio.sleep(0.02)
            await batcher.submit(Job(3))

        await asyncio.gather(caller(1, 4), caller(2, 5), during_the_run())
        await batcher.close()

    asyncio.run(main())
    assert batches == [2, 3]
