"""Latency of the explorer's draw endpoint with every model answering, under concurrent clients.

Starts ``genlab serve RUNS`` in a subprocess on a free 127.0.0.1 port (nothing else is contacted), then ``--clients``
concurrent keep-alive HTTP/1.1 clients send ``--requests`` drawings in all to ``POST /api/draw`` (every loaded
model scores each one). Server and clients are pinned to the same ``--cpus`` (default: two cores), so the
clients' own work competes with the server as it would on a 2-core laptop. Each drawing is a test digit
placed off-centre on a 56 x 56 canvas, the size the page sends, so the server also does the MNIST-style
preprocessing. Reports latency percentiles, errors, throughput and the server's peak resident memory (VmHWM).

    python benchmarks/serve_latency.py RUNS_DIR [--requests 1000] [--clients 8] [--cpus 0,1] [--json]

``RUNS_DIR`` is what ``genlab reproduce --quick --out RUNS_DIR`` wrote (five models). Targets: p50 <= 20 ms,
p95 <= 50 ms, no error, peak RSS <= 1 GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from genlab.errors import GenlabError, one_line_errors

TARGETS = {"p50_ms": 20.0, "p95_ms": 50.0, "rss_mib": 1024.0}


@contextmanager
def running_server(runs, *flags: str, env: dict | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``genlab serve RUNS FLAGS`` on a free 127.0.0.1 port: yields (the process, the line it printed with its
    address) once it listens, and stops it with Ctrl-C (SIGINT) on leaving. A server that does not start is a
    GenlabError with its last line."""
    cmd = [sys.executable, "-m", "genlab.cli", "serve", *map(str, runs), "--host", "127.0.0.1", "--port", "0", *flags]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        if not line.startswith("genlab serve: http://"):
            server.wait(timeout=30)
            raise GenlabError(f"the server did not start: {server.stderr.read().strip().splitlines()[-1:]}")
        yield server, line
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def drawings(n: int = 16, models: list[str] | None = None) -> list[bytes]:
    """``n`` request bodies: test digits of mnist-5k, upscaled x 1.5 and placed off-centre on a 56 x 56 canvas."""
    import cv2

    from genlab.data import load_dataset

    images = load_dataset("mnist-5k", "test").images[:n].numpy()
    rng = np.random.default_rng(0)
    bodies = []
    for img in images:
        big = cv2.resize(img, (42, 42), interpolation=cv2.INTER_LINEAR)
        canvas = np.zeros((56, 56), np.uint8)
        top, left = rng.integers(0, 15, size=2)
        canvas[top:top + 42, left:left + 42] = big
        # base64 of the uint8 pixels, as the page sends them
        body = {"image": base64.b64encode(canvas.tobytes()).decode(), **({"models": models} if models else {})}
        bodies.append(json.dumps(body).encode())
    return bodies


async def _client(host: str, port: int, bodies: list[bytes], counter, total: int, latencies: list,
                  errors: list, n_models: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (i := next(counter)) < total:
            body = bodies[i % len(bodies)]
            head = (f"POST /api/draw HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if b" 200 " not in status:
                errors.append(f"{status.decode().strip()}: {payload[:200].decode(errors='replace')}")
            elif len(json.loads(payload)["models"]) != n_models:
                errors.append("a response without every model")
    finally:
        writer.close()


async def _load(host, port, bodies, total, clients, n_models):
    counter = itertools.count()
    latencies, errors = [], []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, port, bodies, counter, total, latencies, errors, n_models)
                           for _ in range(clients)))
    return latencies, errors, time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or a genlab reproduce folder")
    ap.add_argument("--requests", type=int, default=1000, help="drawings sent in all (default: 1000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    ap.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted (default: 50)")
    ap.add_argument("--cpus", default="", help="CPUs to pin server and clients to, e.g. 0,1 (default: the first two)")
    ap.add_argument("--models", default="", help="ask only these models, e.g. ae (default: all; the serving "
                    "overhead alone shows with the cheapest model)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if not (1 <= args.requests <= 100_000 and 1 <= args.clients <= 64 and 0 <= args.warmup <= 10_000):
        raise GenlabError("--requests must be 1..100000, --clients 1..64 and --warmup 0..10000")

    available = sorted(os.sched_getaffinity(0))
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else available[:2]
    if not set(cpus) <= set(available):
        raise GenlabError(f"--cpus {args.cpus}: this process may use only CPUs {available}")
    os.sched_setaffinity(0, cpus)  # the clients; the server inherits it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_OFFLINE": "1"}
    with running_server(args.runs, env=env) as (server, line):
        address = line.split()[2]
        host, port = address.removeprefix("http://").rstrip("/").rsplit(":", 1)
        port = int(port)
        models = [m for m in args.models.split(",") if m]
        n_models = len(models) or len(line.split("(", 1)[1].split(";")[0].split(","))
        bodies = drawings(models=models)
        asyncio.run(_load(host, port, bodies, args.warmup, args.clients, n_models))
        cpu0, client0 = _cpu_seconds(server.pid), _cpu_seconds(os.getpid())
        latencies, errors, seconds = asyncio.run(_load(host, port, bodies, args.requests, args.clients, n_models))
        server_cpu, client_cpu = _cpu_seconds(server.pid) - cpu0, _cpu_seconds(os.getpid()) - client0
        rss = _rss_mib(server.pid)

    ms = np.array(latencies) * 1000
    result = {
        "requests": len(latencies), "clients": args.clients, "models": n_models, "errors": len(errors),
        "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
        "requests_per_s": len(latencies) / seconds,
        "server_cpu_ms_per_request": 1000 * server_cpu / len(latencies),
        "client_cpu_ms_per_request": 1000 * client_cpu / len(latencies), "load_average": os.getloadavg()[0],
        "rss_mib": rss.get("VmRSS"), "peak_rss_mib": rss.get("VmHWM"),
        "cpus": cpus, "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or 'cpu'})",
        "first_errors": errors[:3],
    }
    result["pass"] = (result["errors"] == 0 and result["p50_ms"] <= TARGETS["p50_ms"]
                      and result["p95_ms"] <= TARGETS["p95_ms"] and result["peak_rss_mib"] <= TARGETS["rss_mib"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['requests']} draws x {n_models} models from {args.clients} clients on CPUs {cpus}: "
              f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
              f"max {result['max_ms']:.1f} ms; {result['requests_per_s']:.0f} requests/s; {result['errors']} errors; "
              f"CPU per request: server {result['server_cpu_ms_per_request']:.2f} ms, clients "
              f"{result['client_cpu_ms_per_request']:.2f} ms; load average "
              f"{result['load_average']:.1f}; "
              f"server RSS {result['rss_mib']:.0f} MiB (peak {result['peak_rss_mib']:.0f} MiB); "
              f"{'PASS' if result['pass'] else 'FAIL'} (p50 <= 20 ms, p95 <= 50 ms, peak RSS <= 1024 MiB)")
        for e in errors[:3]:
            print("  error:", e)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
