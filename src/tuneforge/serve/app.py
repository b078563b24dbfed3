"""The HTTP API over one Predictor (FastAPI): `POST /predict`, `GET /health`, `GET /info`, `GET /metrics`, `GET /`.

`/predict` answers exactly the JSON objects `tuneforge predict` prints, one per input, in order:
`{"predictions": [{"input": ..., "label": ..., ...}, ...]}`. It takes `{"inputs": ["text", ...]}`,
`{"inputs": [["a", "b"], ...]}` for sentence-pair models, `{"images": ["<base64>", ...]}` or a multipart upload of
image files. Every input is checked before it joins a batch, so a bad one is a 4xx JSON error for its own request
(`{"error": "..."}`): 400 bad input, 413 too many items or bytes, 415 wrong content type, 504 timeout.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from tuneforge.errors import TuneforgeError
from tuneforge.serve.service import RequestError, ServeSettings

STATIC = Path(__file__).parent / "static"


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over max_bytes (declared or streamed) ends the request with 413 before it is
    held in memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = _error(413, f"request body of {int(declared)} bytes is over the limit of {self.max_bytes}")
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(service, settings: ServeSettings) -> FastAPI:
    """service: a serve.Service (the predictor, its validation and /info); settings: the limits."""

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_bytes)
    app.add_exception_handler(RequestError, lambda r, e: _error(e.status, str(e)))
    app.add_exception_handler(HTTPException, lambda r, e: _error(e.status_code, str(e.detail)))  # 404, form limits
    app.add_exception_handler(BodyTooLarge, lambda r, e: _error(413, f"request body is over the limit of "
                                                                     f"{settings.max_bytes} bytes"))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", **asdict(service.batcher.stats)}

    @app.get("/info")
    async def info():
        return service.info()

    @app.get("/metrics")
    async def metrics():
        return {"metric": service.info()["metric"], "points": service.curves()}

    @app.post("/predict")
    async def predict(request: Request):
        inputs, echo = await read_inputs(request, service, settings)
        try:
            outputs = await asyncio.wait_for(service.batcher.submit(inputs), settings.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {settings.timeout_s} s (server busy); retry later") from None
        except TuneforgeError as e:
            raise RequestError(400, str(e)) from None
        return {"predictions": [{"input": x, **y} for x, y in zip(echo, outputs)]}

    return app


async def read_inputs(request: Request, service, settings: ServeSettings) -> tuple[list, list]:
    """The request's inputs for the predictor and how each is echoed back (as `tuneforge predict` does)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON ({str(e)[:80]})") from None
        if not isinstance(body, dict):
            raise RequestError(400, 'send a JSON object: {"inputs": [...]} or {"images": [...]}')
        return await run_in_threadpool(service.parse_json, body, settings.max_items)  # image decoding blocks
    if kind == "multipart/form-data":
        async with request.form(max_files=settings.max_items + 1, max_fields=settings.max_items + 16) as form:
            files = [(v.filename or f"images[{i}]", await v.read()) for i, (_, v) in enumerate(form.multi_items())
                     if isinstance(v, UploadFile)]  # the spooled upload files are closed on leaving
        return await run_in_threadpool(service.parse_uploads, files, settings.max_items)
    raise RequestError(415, f"content type '{kind or 'none'}' is not accepted; send application/json or "
                            "multipart/form-data")
