"""Load test for `tuneforge serve`: N concurrent clients for T seconds, per backend (torch / onnxruntime) and
batching on / off, each against a fresh server started here as a subprocess on loopback.

Inputs are the run's own validation rows (read through its saved config, as `tuneforge export` does; synthetic
inputs when the data is gone), one per request; images are uploaded as files. Reports requests/s, p50 / p95 / p99
latency, errors and the mean items per forward pass (from the server's /health), and writes JSON to
benchmarks/results/. The ONNX backend needs an export; it is made with `tuneforge export` when missing.

    python benchmarks/load_test.py runs/sst2 --clients 16 --seconds 30
    python benchmarks/load_test.py runs/ants --clients 8 --seconds 30 --threads 2

On a machine shared with other jobs the absolute numbers are only indicative; compare the rows of one run.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_bodies(run_dir: Path, n: int) -> tuple[str, list[dict]]:
    """(modality, httpx keyword arguments for one request each) from the run's validation rows."""
    from tuneforge.export import load_run
    from tuneforge.export_parity import parity_inputs

    run = load_run(run_dir, log=lambda *_: None)
    inputs, source = parity_inputs(run, n, log=lambda *_: None)
    print(f"load_test: {len(inputs)} {source['kind']} inputs", file=sys.stderr)
    if run.bundle.modality == "image":
        return "image", [{"files": [("images", (f"img{i}.png", _image_bytes(x), "image/png"))]}
                         for i, x in enumerate(inputs)]
    as_json = [list(x) if isinstance(x, tuple) else " ".join(x) if isinstance(x, list) else x for x in inputs]
    return "text", [{"json": {"inputs": [x]}} for x in as_json]


def _image_bytes(x) -> bytes:
    if isinstance(x, str):
        return Path(x).read_bytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def start_server(run_dir: Path, port: int, onnx: bool, batching: bool, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tuneforge", "serve", str(run_dir), "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    cmd += ["--onnx"] * onnx + ["--no-batching"] * (not batching)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load_test: the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"load_test: no server at {url} after {timeout} s")


async def drive(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """`clients` loops, each sending one request after the other until `seconds` have passed."""
    import httpx

    latencies, errors, sent = [], [], [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        for body in bodies[:3]:  # warm-up: first-call kernel set-up is not the steady state
            await c.post("/predict", **body)
        before = (await c.get("/health")).json()
        stop = time.perf_counter() + seconds

        async def client(k: int):
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/predict", **bodies[i % len(bodies)])
                    (latencies if r.status_code == 200 else errors).append(
                        time.perf_counter() - t0 if r.status_code == 200 else r.status_code)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
        after = (await c.get("/health")).json()
    passes = after["forward_passes"] - before["forward_passes"]
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_kinds": sorted({str(e) for e in errors}),
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) if len(ms) else None for q in (50, 95, 99)},
            "items_per_forward_pass": round((after["items"] - before["items"]) / passes, 2) if passes else None}


def ensure_export(run_dir: Path) -> None:
    if (run_dir / "export" / "onnx" / "model.onnx").is_file():
        return
    print("load_test: no ONNX export yet; running `tuneforge export`", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "tuneforge", "export", str(run_dir)], check=True)


def one_setting(run_dir: Path, bodies: list[dict], onnx: bool, batching: bool, args) -> dict:
    port = free_port()
    proc = start_server(run_dir, port, onnx, batching, args)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        result = asyncio.run(drive(f"http://127.0.0.1:{port}", bodies, args.clients, args.seconds))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"backend": "onnxruntime fp32" if onnx else "torch", "batching": batching, "clients": args.clients,
            **result}


def table(rows: list[dict]) -> str:
    head = f"{'backend':<17} {'batching':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} " \
           f"{'items/pass':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<17} {'on' if r['batching'] else 'off':<8} {r['requests_per_s']:>8} "
                     f"{r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['p99_ms']!s:>8} {r['errors']:>6} "
                     f"{r['items_per_forward_pass']!s:>10}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--backends", default="torch,onnx", help="comma list of torch, onnx")
    p.add_argument("--batching", default="on,off", help="comma list of on, off")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server (torch and onnxruntime)")
    p.add_argument("--rows", type=int, default=256, help="distinct inputs cycled through")
    p.add_argument("--output", help="JSON file (default benchmarks/results/load_test_<run>.json)")
    args = p.parse_args()
    load = os.getloadavg()
    run_dir = Path(args.run_dir)
    backends = [b.strip() for b in args.backends.split(",")]
    if "onnx" in backends:
        ensure_export(run_dir)
    modality, bodies = request_bodies(run_dir, args.rows)
    rows = [one_setting(run_dir, bodies, b == "onnx", m.strip() == "on", args)
            for b in backends for m in args.batching.split(",")]
    print(table(rows))
    out = Path(args.output or HERE / "results" / f"load_test_{run_dir.resolve().name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv), "run_dir": str(run_dir),
        "modality": modality, "cpu_count": os.cpu_count(), "load_average_at_start": load,
        "note": "client and server share this machine's cores; compare rows of one run, not absolute numbers",
        "results": rows}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
