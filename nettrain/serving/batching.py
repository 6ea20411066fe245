"""Dynamic batching: the inputs of concurrent requests joined on their way to the model.

A request's inputs wait in a queue; the batcher takes the queue's head as soon as it holds `max_batch` inputs,
or when its oldest input has waited `wait_s`, or at once when no other request is on its way (being read and
decoded: waiting for nobody would only add latency). It runs the model in a thread of its own, off the event
loop, so requests keep arriving (and forming the next batch) while the model works. With one client a request
never waits; with many, each model call serves many requests, so throughput grows with the clients.

A request whose client went away (its future cancelled) is dropped before its batch runs and its answer is
never delivered; the others in the batch are answered as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nettrain.errors import first_line
from nettrain.serving.errors import RequestError

log = logging.getLogger("nettrain")


@dataclass
class _Job:
    inputs: list[Any]
    future: asyncio.Future[list[Any]]
    arrived: float


class Batcher:
    """Runs `run(inputs) -> one output per input` on batches of at most `max_batch` inputs, one batch at a time."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int, wait_s: float, max_waiting: int) -> None:
        self._run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_waiting = max_waiting  # inputs queued beyond this are refused (503), not kept waiting for minutes
        self.batch_sizes: Counter[int] = Counter()  # how many model calls saw each batch size
        self._waiting: deque[_Job] = deque()
        self._waiting_inputs = 0
        self._preparing = 0  # requests read and decoded now, whose inputs will soon wait here
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nettrain-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="nettrain-batcher")

    async def stop(self) -> None:
        """Stop batching; whatever still waits is answered 503 (a graceful shutdown has answered the rest)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(RequestError("the server is stopping", 503))
        self._waiting.clear()
        self._executor.shutdown(wait=True)

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Around a request's reading and decoding: a batch about to run waits for it (up to wait_s)."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            self._arrived.set()  # done, or refused: a waiting batch need not wait for it any longer

    async def submit(self, inputs: list[Any]) -> list[Any]:
        """The outputs for `inputs`, in order, once a batch holding them has run."""
        if self._waiting_inputs + len(inputs) > self.max_waiting:
            raise RequestError(f"the server is busy: {self._waiting_inputs} inputs wait for the model; retry shortly",
                               503, {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future(), loop.time())
        self._waiting.append(job)
        self._waiting_inputs += len(inputs)
        self._arrived.set()
        return await job.future  # cancelled with its request: the batcher then skips it

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._filled()
            jobs = self._take()
            if not jobs:
                continue
            batch = [x for job in jobs for x in job.inputs]
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # the model itself failed (out of memory, a broken custom model): say so, keep serving
                log.error("the model failed on a batch of %d input(s): %s", len(batch), first_line(e))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RequestError(f"the model failed on this batch: {first_line(e)}", 500))
                continue
            self.batch_sizes[len(batch)] += 1
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(outputs[start:start + len(job.inputs)])
                start += len(job.inputs)

    async def _filled(self) -> None:
        """Until a batch is due: max_batch inputs wait, the oldest has waited wait_s, or no request is on its way."""
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self.wait_s
        while self._waiting_inputs < self.max_batch and self._preparing and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[_Job]:
        """The waiting requests that fit in one batch, oldest first (a request is never split)."""
        jobs: list[_Job] = []
        size = 0
        while self._waiting and (not jobs or size + len(self._waiting[0].inputs) <= self.max_batch):
            job = self._waiting.popleft()
            self._waiting_inputs -= len(job.inputs)
            if job.future.done():
                continue  # its client went away
            jobs.append(job)
            size += len(job.inputs)
        return jobs
