"""Model updates without downtime: a newer predictor is swapped in under concurrent load with zero failed
requests, and a half-written one is never served (tiny predictor, real uvicorn, aiohttp clients)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
from conftest import real_images
from serve_support import Server, write_predictor

from fruitlens.serve.app import create_app
from fruitlens.serve.config import ServeConfig


async def _load(port: int, photos: list[bytes], clients: int, seconds: float, during=None):
    """``clients`` keep-alive clients POSTing photos for ``seconds``; → [(received, sent, status, version or
    error)], in the order the answers were received."""
    seen: list[tuple[float, float, int, str]] = []
    deadline = time.monotonic() + seconds

    async def client(i: int, session: aiohttp.ClientSession):
        n = i
        while time.monotonic() < deadline:
            body = photos[n % len(photos)]
            n += 1
            sent = time.monotonic()
            async with session.post(f"http://127.0.0.1:{port}/v1/predict", data=body,
                                    headers={"Content-Type": "image/jpeg"}) as r:
                answer = await r.json()
                seen.append((time.monotonic(), sent, r.status, answer["model"]["version"] if r.status == 200
                             else answer["error"]["code"]))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(i, session)) for i in range(clients)]
        if during:
            await asyncio.sleep(seconds / 3)
            await asyncio.to_thread(during)
        await asyncio.gather(*tasks)
    return sorted(seen)


def _metric(server, name: str) -> float:
    text = server.request("GET", "/metrics")[2].decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{"))


def test_new_predictor_is_swapped_in_under_load_with_zero_failures(tmp_path):
    out = tmp_path / "out"
    write_predictor(out, seed=0)
    photos = [p.read_bytes() for p in real_images(per_class=1, classes=4)]
    with Server(create_app(ServeConfig(str(out), poll_s=0.05, threads=1, decode_threads=2))) as s:
        old = s.wait_ready()["model"]["version"]
        seen = asyncio.run(_load(s.port, photos, clients=8, seconds=3.0,
                                 during=lambda: write_predictor(out, seed=1, trained_at="2026-02-02T00:00:00+00:00")))
        new = s.json("GET", "/readyz")[2]["model"]
        swaps = _metric(s, "fruitlens_serve_model_swaps_total")
    assert new["version"] != old and new["trained_at"] == "2026-02-02T00:00:00+00:00"
    failures = [x for x in seen if x[2] != 200]
    assert failures == [] and len(seen) > 50
    # Switched once, for good: answers before the first new one are the old model's, and every photo sent after
    # an answer from the new model came back from it. (Photos in flight at the swap may come back in any order
    # across the clients' connections: they finish on the model they were batched with.)
    first_new = next(received for received, _, _, v in seen if v == new["version"])
    assert {v for received, _, _, v in seen if received < first_new} == {old}
    assert {v for _, sent, _, v in seen if sent > first_new} == {new["version"]}
    assert swaps == 1


def test_a_half_written_predictor_is_never_served(tmp_path):
    out = tmp_path / "out"
    write_predictor(out, seed=0)
    with Server(create_app(ServeConfig(str(out), poll_s=0.05, threads=1))) as s:
        old = s.wait_ready()["model"]["version"]
        info = json.loads((out / "predictor" / "predictor.json").read_text())
        (out / "predictor" / "predictor.json").unlink()  # train deleted the folder and is writing it
        time.sleep(0.3)
        assert s.json("GET", "/readyz")[2]["model"]["version"] == old  # the old model goes on being served
        (out / "predictor" / "predictor.json").write_text(json.dumps({**info, "engine_sha256": "0" * 64,
                                                                    "trained_at": "x"}))
        time.sleep(0.3)  # predictor.json names another model.onnx than the one there: refused
        assert s.json("GET", "/readyz")[2]["model"]["version"] == old
        assert _metric(s, "fruitlens_serve_model_load_failures_total") >= 1
        assert s.json("POST", "/v1/predict", real_images(per_class=1, classes=1)[0].read_bytes(),
                      {"Content-Type": "image/jpeg"})[0] == 200
        write_predictor(out, seed=1)
        deadline = time.monotonic() + 10
        while s.json("GET", "/readyz")[2]["model"]["version"] == old:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_republishing_the_same_model_is_not_a_swap(tmp_path):
    out = tmp_path / "out"
    write_predictor(out, seed=0)
    with Server(create_app(ServeConfig(str(out), poll_s=0.05, threads=1))) as s:
        old = s.wait_ready()["model"]["version"]
        write_predictor(out, seed=0, trained_at="2026-03-03T00:00:00+00:00")  # same arrays, new predictor.json
        time.sleep(0.4)
        assert s.json("GET", "/readyz")[2]["model"]["version"] == old
        assert _metric(s, "fruitlens_serve_model_swaps_total") == 0


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    out = tmp_path / "out"
    write_predictor(out)
    photos = [p.read_bytes() for p in real_images(per_class=1, classes=2)]
    with Server(create_app(ServeConfig(str(out), threads=1, max_queue=1, max_batch=1, batch_wait_ms=0))) as s:
        s.wait_ready()
        release = threading.Event()
        engine = s.service.current.predictor.engine
        real = engine.predict
        engine.predict = lambda batch: (release.wait(10), real(batch))[1]  # the engine stalls
        try:
            results: list = []
            threads = [threading.Thread(target=lambda: results.append(s.request(
                "POST", "/v1/predict", photos[0], {"Content-Type": "image/jpeg"}))) for _ in range(4)]
            for t in threads:
                t.start()
                time.sleep(0.1)  # one in the engine, one queued, the others refused
            release.set()
            for t in threads:
                t.join(30)
        finally:
            engine.predict = real
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 200, 503, 503]
    refused = [r for r in results if r[0] == 503]
    assert all(int(r[1]["retry-after"]) >= 1 and b'"overloaded"' in r[2] for r in refused)
