"""Micro-batching: photos of concurrent requests share one engine call.

One task runs the engine, one batch at a time, in one inference thread (ONNX Runtime spreads each call
over its intra-op threads). A lone photo waits at most ``wait_s`` for company while the engine is idle;
under load the photos that arrive while a batch runs form the next one, so batches grow with load.
The queue is bounded in photos: a request that does not fit is refused at once (:class:`Overloaded`,
503 + Retry-After) rather than queued behind seconds of work.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class Overloaded(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class _Item:
    handle: object  # a models.ModelHandle: the photo runs on the model it was decoded for
    array: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, executor: Executor, *, max_batch: int = 32, wait_s: float = 0.002, max_queue: int = 128,
                 timeout_s: float = 10.0, on_batch: Callable[[int, float], None] | None = None,
                 on_queue: Callable[[int], None] | None = None) -> None:
        self.executor, self.max_batch, self.wait_s = executor, max_batch, wait_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.on_batch, self.on_queue = on_batch, on_queue
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._rate = 0.0  # photos/s, a moving average: how long a refused client should wait
        self._running = False  # a batch is in the engine
        self._idle_arrival = False  # photos came while the engine was idle: worth waiting for company

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fruitlens-batcher")

    async def stop(self, drain_s: float = 20.0) -> None:
        """Finish what is queued (at most ``drain_s``), then stop."""
        deadline = time.monotonic() + drain_s
        while self._queue and time.monotonic() < deadline and self.alive:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def retry_after(self) -> int:
        return max(1, math.ceil(len(self._queue) / self._rate)) if self._rate > 0 else 1

    def submit(self, handle, arrays: list[np.ndarray]) -> list[asyncio.Future]:
        """Queue the photos of one request, all or none; raises :class:`Overloaded` when they do not fit."""
        if len(self._queue) + len(arrays) > self.max_queue:
            raise Overloaded(f"{len(self._queue)} photos are waiting for the engine; try again shortly",
                             self.retry_after())
        loop = asyncio.get_running_loop()
        if not self._running and not self._queue:
            self._idle_arrival = True
        futures = []
        for a in arrays:
            item = _Item(handle, a, loop.create_future())
            self._queue.append(item)
            futures.append(item.future)
        self._changed()
        self._wake.set()
        return futures

    def _changed(self) -> None:
        if self.on_queue:
            self.on_queue(len(self._queue))

    def _take(self) -> list[_Item]:
        """Up to max_batch live items of the first item's model; expired ones are answered 503."""
        batch: list[_Item] = []
        handle = None
        keep: deque[_Item] = deque()
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # the client went away (its request was cancelled)
                continue
            if now - item.queued_at > self.timeout_s:
                item.future.set_exception(Overloaded(f"queued over {self.timeout_s:g} s", self.retry_after()))
                continue
            if handle is None:
                handle = item.handle
            if item.handle is handle:
                batch.append(item)
            else:  # photos decoded for another model (a swap just happened): the next batch
                keep.append(item)
        self._queue.extendleft(reversed(keep))
        self._changed()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self._idle_arrival:  # the engine was idle: wait a moment for the photos of concurrent requests
                self._idle_arrival = False
                if self.wait_s > 0 and len(self._queue) < self.max_batch:
                    await asyncio.sleep(self.wait_s)
            batch = self._take()
            if not batch:
                continue
            t = time.perf_counter()
            self._running = True
            try:
                probs = await loop.run_in_executor(
                    self.executor, _infer, batch[0].handle, [i.array for i in batch])
            except Exception as exc:  # noqa: BLE001 - one failed batch fails its own requests only
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._running = False
            seconds = time.perf_counter() - t
            rate = len(batch) / max(seconds, 1e-6)
            self._rate = 0.8 * self._rate + 0.2 * rate if self._rate else rate
            if self.on_batch:
                self.on_batch(len(batch), seconds)
            for item, p in zip(batch, probs, strict=True):
                if not item.future.done():
                    item.future.set_result(p)


def _infer(handle, arrays: list[np.ndarray]) -> np.ndarray:
    return handle.predictor.probabilities(np.stack(arrays))
