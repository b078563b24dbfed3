"""Dynamic batching: requests that arrive within `max_wait_s` of each other share one forward pass.

One asyncio worker takes the first waiting request, keeps collecting requests until `max_batch` items or the
wait is over, and runs them as one call of `predict_fn` in a single-thread executor (so the model never runs twice
at once and the event loop stays free). A request bigger than `max_batch` runs alone. With batching off, every
request is its own call (the benchmark's baseline). When a merged call fails, each request of it is retried alone,
so one bad input fails only its own request.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Job:
    items: list
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    items: int = 0
    forward_passes: int = 0  # calls of predict_fn
    largest_batch: int = 0


class Batcher:
    def __init__(self, predict_fn: Callable[[list], list], max_batch: int = 32, max_wait_s: float = 0.005,
                 enabled: bool = True):
        self.predict_fn = predict_fn
        self.max_batch, self.max_wait_s, self.enabled = max_batch, max_wait_s, enabled
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-infer")
        self.queue: Optional[asyncio.Queue] = None
        self.worker: Optional[asyncio.Task] = None
        self.carry: Optional[Job] = None  # a request that did not fit the previous batch

    def start(self) -> None:
        """Call from the serving event loop (app startup)."""
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list) -> list:
        """→ predict_fn's outputs for these items, in order (possibly computed together with other requests)."""
        job = Job(list(items), asyncio.get_running_loop().create_future())
        self.stats.requests += 1
        await self.queue.put(job)
        return await job.future

    async def _next_group(self) -> list[Job]:
        first = self.carry or await self.queue.get()
        self.carry = None
        group, n = [first], len(first.items)
        if not self.enabled:
            return group
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while n < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                job = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if n + len(job.items) > self.max_batch:
                self.carry = job  # first in the next batch: order of arrival is kept
                break
            group.append(job)
            n += len(job.items)
        return group

    async def _run(self) -> None:
        while True:
            group = [j for j in await self._next_group() if not j.future.done()]  # done: timed out while queued
            if group:
                await self._forward(group)

    async def _call(self, items: list) -> list:
        self.stats.forward_passes += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.predict_fn, items)

    async def _forward(self, group: list[Job]) -> None:
        try:
            outputs = await self._call([x for job in group for x in job.items])
        except Exception as e:
            if len(group) == 1:
                _settle(group[0], error=e)
                return
            for job in group:  # find the request that broke the batch; the others still get answers
                await self._forward([job])
            return
        start = 0
        for job in group:
            _settle(job, outputs[start:start + len(job.items)])
            start += len(job.items)


def _settle(job: Job, result: Optional[list] = None, error: Optional[BaseException] = None) -> None:
    if job.future.done():  # the request gave up (timeout / client gone)
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
