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
