"""`tuneforge serve`: the HTTP API (health, info, metrics, predict in order, images as base64 and uploads, the ONNX
backend), 4xx errors for bad input, and dynamic batching (concurrent requests share forward passes)."""
from __future__ import annotations

import asyncio
import base64
import io
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="tuneforge serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import make_color_image  # noqa: E402
from tuneforge.predict import Predictor
from tuneforge.serve import ServeSettings, Service, build_service
from tuneforge.serve.app import create_app
from tuneforge.serve.batcher import Batcher

pytest_plugins = ["ship_runs"]


def client(run_dir, onnx=False, **settings) -> TestClient:
    s = ServeSettings(**settings)
    return TestClient(create_app(build_service(run_dir, s, onnx), s))


def png_bytes(color: str, size: int = 40) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_color_image(np.random.default_rng(1), color, size)).save(buf, format="PNG")
    return buf.getvalue()


def test_text_api_health_info_metrics_predict(ship_run):
    run = ship_run("text")
    texts = ["the movie was good", "awful and boring", "lovely", "the plot was poor"]
    with client(run) as c:
        assert c.get("/health").json()["status"] == "ok"
        info = c.get("/info").json()
        assert info["task"] == "classification" and info["labels"] == ["0", "1"] and info["modality"] == "text"
        assert info["texts_per_example"] == 1 and info["backend"] == "torch" and info["metric"] == "accuracy"
        assert 0.0 <= info["validation"]["accuracy"] <= 1.0
        points = c.get("/metrics").json()["points"]
        assert [p["step"] for p in points] == [20, 40, 60] and all("accuracy" in p for p in points)
        r = c.post("/predict", json={"inputs": texts})
        assert r.status_code == 200
        got = r.json()["predictions"]
    expected = Predictor(run).predict(texts)
    assert [g["input"] for g in got] == texts  # in order, echoing the input as `tuneforge predict` does
    assert [{k: v for k, v in g.items() if k != "input"} for g in got] == expected
    assert set(got[0]["probabilities"]) == {"0", "1"}
    assert "text/html" in TestClient(create_app(build_service(run, ServeSettings()), ServeSettings())).get(
        "/").headers["content-type"]


def test_pairs_and_onnx_backend(ship_export):
    run, _ = ship_export("pair")
    pairs = [["the film was good", "a lovely story"], ["bad", "great"]]
    with client(run, onnx=True) as c:
        assert c.get("/info").json()["backend"] == "onnxruntime fp32"
        got = c.post("/predict", json={"inputs": pairs}).json()["predictions"]
        assert [g["input"] for g in got] == pairs
        r = c.post("/predict", json={"inputs": ["only one text"]})
        assert r.status_code == 400 and "pair of two strings" in r.json()["error"]
    expected = Predictor(run).predict([tuple(p) for p in pairs])
    assert np.allclose([g["value"] for g in got], [e["value"] for e in expected], atol=1e-3)


def test_images_base64_and_upload(ship_run, image_data_dir):
    run = ship_run("image")
    red, blue = png_bytes("red"), png_bytes("blue", 57)
    with client(run) as c:
        j = c.post("/predict", json={"images": [base64.b64encode(red).decode(),
                                                "data:image/png;base64," + base64.b64encode(blue).decode()]})
        u = c.post("/predict", files=[("images", ("red.png", red, "image/png")), ("images", ("b.png", blue, "image/png"))])
        bad = c.post("/predict", files=[("images", ("x.png", b"not an image", "image/png"))])
        text = c.post("/predict", json={"inputs": ["a text"]})
    assert j.status_code == 200 and u.status_code == 200
    assert [p["input"] for p in u.json()["predictions"]] == ["red.png", "b.png"]
    strip = lambda preds: [{k: v for k, v in p.items() if k != "input"} for p in preds]  # noqa: E731
    assert strip(j.json()["predictions"]) == strip(u.json()["predictions"])
    # an upload decodes exactly as the same file read from disk by `tuneforge predict`
    path = image_data_dir / "val" / "red" / "red_000.png"
    with client(run) as c:
        up = c.post("/predict", files=[("images", ("r.png", path.read_bytes(), "image/png"))]).json()
    assert strip(up["predictions"]) == Predictor(run).predict([str(path)])
    assert bad.status_code == 400 and bad.json()["error"].startswith("x.png: not a readable image")
    photo = io.BytesIO()  # a camera-sized upload (over starlette's 1 MB limit for plain form fields)
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 700, 3), dtype=np.uint8)).save(photo, "PNG")
    assert len(photo.getvalue()) > 1.5e6
    with client(run) as c:
        big = c.post("/predict", files=[("images", ("big.png", photo.getvalue(), "image/png"))])
        missing = c.get("/nowhere")
    assert big.status_code == 200 and big.json()["predictions"][0]["label"] in ("red", "blue")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    assert text.status_code == 400 and "image model" in text.json()["error"]


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"json": {"inputs": ["ok", "   "]}}, 400, "inputs[1]: empty text"),
    ({"json": {"inputs": [["a", "b"]]}}, 400, "takes one string, got a list of 2"),
    ({"json": {"inputs": [3]}}, 400, "takes one string, got int"),
    ({"json": {"inputs": []}}, 400, "non-empty list"),
    ({"json": {"texts": ["a"]}}, 400, "this is a text model"),
    ({"json": ["a"]}, 400, "JSON object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"json": {"inputs": ["a"] * 5}}, 413, "5 inputs in one request; the limit is 4"),
    ({"content": b"a" * 5000, "headers": {"content-type": "application/json"}}, 413, "over the limit of 4096"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type 'text/plain'"),
])
def test_bad_requests_are_4xx_json(ship_run, request_kwargs, status, message):
    with client(ship_run("text"), max_items=4, max_bytes=4096) as c:
        r = c.post("/predict", **request_kwargs)
    assert r.status_code == status and message in r.json()["error"], r.text


class SlowPredictor:
    """A predictor that takes `delay` seconds per call (for the timeout)."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay
        self.modality, self.cfg, self.bundle, self.task = inner.modality, inner.cfg, inner.bundle, inner.task

    def predict(self, inputs, top_k=None):
        time.sleep(self.delay)
        return self.inner.predict(inputs, top_k)


def test_request_timeout_is_504(ship_run):
    run = ship_run("text")
    s = ServeSettings(timeout_s=0.2)
    with TestClient(create_app(Service(SlowPredictor(Predictor(run), 1.0), run, s), s)) as c:
        r = c.post("/predict", json={"inputs": ["good"]})
    assert r.status_code == 504 and "no answer within 0.2 s" in r.json()["error"]


# ------------------------------------------------------------------ batching


def _run_batcher(batcher: Batcher, requests: list[list]):
    async def go():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(go())


def test_batcher_merges_in_order_and_isolates_failures():
    calls = []

    def predict(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    b = Batcher(predict, max_batch=5, max_wait_s=0.2)
    out = _run_batcher(b, [["a", "b"], ["c"], ["d", "e"], ["f", "g", "h"]])
    assert out == [["A", "B"], ["C"], ["D", "E"], ["F", "G", "H"]]
    assert calls == [["a", "b", "c", "d", "e"], ["f", "g", "h"]]  # full at 5; the next request starts batch 2
    assert b.stats.forward_passes == 2 and b.stats.largest_batch == 5 and b.stats.requests == 4

    calls.clear()
    out = _run_batcher(Batcher(predict, max_batch=8, max_wait_s=0.2), [["a"], ["boom"], ["c"]])
    assert out[0] == ["A"] and out[2] == ["C"] and isinstance(out[1], ValueError)
    assert calls[0] == ["a", "boom", "c"]  # merged, failed, then each request alone

    calls.clear()
    out = _run_batcher(Batcher(predict, max_batch=8, max_wait_s=0.2, enabled=False), [["a"], ["b"], ["c"]])
    assert out == [["A"], ["B"], ["C"]] and calls == [["a"], ["b"], ["c"]]


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_share_forward_passes_on_real_uvicorn(ship_run, live_server, batching):
    import httpx

    run = ship_run("text")
    s = ServeSettings(max_batch=16, max_wait_ms=300, batching=batching)
    texts = [f"the movie was {w}" for w in ("good", "bad", "lovely", "awful", "fine", "poor", "great", "boring")]

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/predict", json={"inputs": [t]}) for t in texts))
            return [r.json()["predictions"][0] for r in rs], (await c.get("/health")).json()

    with live_server(create_app(build_service(run, s), s)) as url:
        got, health = asyncio.run(fire(url))
    assert [g["input"] for g in got] == texts
    expected = Predictor(run).predict(texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert health["requests"] == 8 and health["items"] == 8
    if batching:
        assert health["forward_passes"] <= 3 and health["largest_batch"] >= 3, health
    else:
        assert health["forward_passes"] == 8 and health["largest_batch"] == 1
