"""The micro-batcher on its own: a fake model records every engine call (pure asyncio, no HTTP)."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fruitlens.serve.batcher import MicroBatcher, Overloaded


class FakePredictor:
    def __init__(self, delay=0.0, fail=False):
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail
        self.gate = threading.Event()
        self.gate.set()

    def probabilities(self, stack):
        self.gate.wait(10)
        self.calls.append(len(stack))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("engine failed")
        return np.repeat(stack[:, :1].astype(float), 2, axis=1)  # the photo's own value: answers match photos


class Handle:
    def __init__(self, predictor):
        self.predictor = predictor


def _run(coro):
    return asyncio.run(coro)


def _photo(v):
    return np.array([v], dtype=np.float64)


async def _batcher(**kw):
    b = MicroBatcher(ThreadPoolExecutor(1), **kw)
    b.start()
    return b


def test_concurrent_requests_share_one_batch_up_to_max_batch():
    async def main():
        fake = FakePredictor()
        fake.gate.clear()  # the first batch blocks: the rest pile up meanwhile
        b = await _batcher(max_batch=4, wait_s=0.001, max_queue=100)
        h = Handle(fake)
        first = b.submit(h, [_photo(0)])
        await asyncio.sleep(0.05)
        rest = [b.submit(h, [_photo(i)])[0] for i in range(1, 10)]
        fake.gate.set()
        got = await asyncio.gather(*first, *rest)
        await b.stop()
        assert [g[0] for g in got] == list(range(10))  # each request gets its own photo's answer
        return fake.calls
    assert _run(main()) == [1, 4, 4, 1]


def test_a_lone_request_waits_at_most_the_batch_wait():
    async def main():
        b = await _batcher(max_batch=32, wait_s=0.05)
        h = Handle(FakePredictor())
        t = time.perf_counter()
        await asyncio.gather(*b.submit(h, [_photo(1)]))
        took = time.perf_counter() - t
        await b.stop()
        return took
    took = _run(main())
    assert 0.05 <= took < 0.5


def test_full_queue_rejects_with_overloaded_and_retry_after():
    async def main():
        fake = FakePredictor()
        fake.gate.clear()
        b = await _batcher(max_batch=2, wait_s=0, max_queue=3)
        h = Handle(fake)
        running = b.submit(h, [_photo(0)])
        await asyncio.sleep(0.05)  # taken by the engine: the queue is empty again
        queued = b.submit(h, [_photo(1), _photo(2)])
        with pytest.raises(Overloaded) as info:
            b.submit(h, [_photo(3), _photo(4)])  # all or none: 2 + 2 > 3
        assert info.value.retry_after >= 1 and b.queued == 2
        fake.gate.set()
        await asyncio.gather(*running, *queued)
        await b.stop()
    _run(main())


def test_photos_decoded_for_the_old_model_run_on_it_after_a_swap():
    async def main():
        old, new = FakePredictor(), FakePredictor()
        old.gate.clear()
        b = await _batcher(max_batch=8, wait_s=0)
        first = b.submit(Handle(old), [_photo(0)])
        await asyncio.sleep(0.05)
        h_old, h_new = Handle(old), Handle(new)
        mixed = [b.submit(h_old, [_photo(1)])[0], b.submit(h_new, [_photo(2)])[0], b.submit(h_old, [_photo(3)])[0]]
        old.gate.set()
        await asyncio.gather(*first, *mixed)
        await b.stop()
        return old.calls, new.calls
    old_calls, new_calls = _run(main())
    assert old_calls == [1, 2] and new_calls == [1]


def test_an_engine_failure_fails_only_that_batch():
    async def main():
        bad, good = FakePredictor(fail=True), FakePredictor()
        b = await _batcher(max_batch=8, wait_s=0)
        with pytest.raises(RuntimeError, match="engine failed"):
            await asyncio.gather(*b.submit(Handle(bad), [_photo(1)]))
        got = await asyncio.gather(*b.submit(Handle(good), [_photo(2)]))
        assert got[0][0] == 2 and b.alive
        await b.stop()
    _run(main())


def test_cancelled_requests_are_dropped_before_inference():
    async def main():
        fake = FakePredictor()
        fake.gate.clear()
        b = await _batcher(max_batch=8, wait_s=0)
        h = Handle(fake)
        first = b.submit(h, [_photo(0)])
        await asyncio.sleep(0.05)
        gone = b.submit(h, [_photo(1), _photo(2)])
        kept = b.submit(h, [_photo(3)])
        for f in gone:
            f.cancel()
        fake.gate.set()
        await asyncio.gather(*first, *kept)
        await b.stop()
        return fake.calls
    assert _run(main()) == [1, 1]


def test_a_photo_queued_past_the_timeout_gets_overloaded():
    async def main():
        fake = FakePredictor()
        fake.gate.clear()
        b = await _batcher(max_batch=8, wait_s=0, timeout_s=0.05)
        h = Handle(fake)
        first = b.submit(h, [_photo(0)])
        await asyncio.sleep(0.02)
        late = b.submit(h, [_photo(1)])
        await asyncio.sleep(0.1)
        fake.gate.set()
        await asyncio.gather(*first)
        with pytest.raises(Overloaded):
            await asyncio.gather(*late)
        await b.stop()
    _run(main())
