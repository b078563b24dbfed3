"""`tuneforge serve RUN`: a run's model over HTTP (FastAPI + uvicorn), with dynamic batching and a web page.

service.py: the model side (input checks, the batcher, the model card); batcher.py: dynamic batching; app.py:
the HTTP API; static/: the page. Importing this package needs no web framework (the CLI checks for it first).
"""
from __future__ import annotations

import sys

from tuneforge.errors import TuneforgeError
from tuneforge.serve.service import ServeSettings, Service, build_service


def run_serve_cli(a) -> None:
    from tuneforge.export import require_extra

    require_extra("serve", ("fastapi", "uvicorn", "multipart"))
    if a.onnx:
        require_extra("export", ("onnxruntime",))
    import uvicorn

    from tuneforge.serve.app import create_app

    for name, value, low in (("--max-batch", a.max_batch, 1), ("--max-items", a.max_items, 1), ("--port", a.port, 1),
                             ("--max-wait-ms", a.max_wait_ms, 0), ("--timeout-s", a.timeout_s, 0)):
        if value < low:
            raise TuneforgeError(f"{name} must be at least {low} (got {value})")
    settings = ServeSettings(max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, batching=not a.no_batching,
                             max_items=a.max_items, timeout_s=a.timeout_s)
    service = build_service(a.run_dir, settings, a.onnx or False)
    print(f"tuneforge: serving {a.run_dir} ({service.backend}, batching "
          f"{'up to %d items / %g ms' % (a.max_batch, a.max_wait_ms) if settings.batching else 'off'}) on "
          f"http://{a.host}:{a.port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(service, settings), host=a.host, port=a.port, log_level="warning", access_log=False)


__all__ = ["Service", "ServeSettings", "build_service", "run_serve_cli"]
