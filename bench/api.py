"""Latency of ``POST /anneal`` (validation + window resolution + enqueue, not the merge).

    python bench/api.py                       # 50 concurrent clients, 1000 requests, embedded broker
    python bench/api.py --redis               # same against a throwaway redis-server on loopback
    python bench/api.py --clients 50 --requests 2000

Starts ``wsm serve`` (uvicorn, one process) on a free loopback port over a temporary store with a
synthetic 10-checkpoint run, and no worker (jobs just queue). Every request asks for a distinct
job (the floor varies), so each one pins, writes a job record and publishes a message. Prints
p50/p90/p99 latency and throughput as JSON; the target is p99 < 100 ms. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.api.fixtures import make_run  # noqa: E402
from tests.api.worker import free_port, redis_server  # noqa: E402
from wsm.store import Store  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def hammer(url: str, clients: int, requests: int) -> tuple[list[float], dict[int | str, int], float]:
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one_client() -> None:
            for i in counter:
                body = {"curve": "1-sqrt", "window": "40M", "floor": round(i * 1e-6, 9), "evaluate": False}
                t = time.perf_counter()
                try:
                    code: int | str = (await client.post("/anneal", json=body)).status_code
                except httpx.HTTPError as e:  # counted, not hidden: a dropped connection is a failure
                    code = type(e).__name__
                latencies.append(time.perf_counter() - t)
                statuses[code] = statuses.get(code, 0) + 1

        # Warm-up: the first requests build the Celery producer pool and SQLite tables.
        for _ in range(3):
            await client.post("/anneal", json={"curve": "linear", "window": "20M", "evaluate": False})
        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--redis", action="store_true", help="use a throwaway redis-server as the broker")
    parser.add_argument(
        "--tmp-dir", default=None, help="where the store and state go (e.g. /dev/shm: no fsync cost)"
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="wsm-bench-api-", dir=args.tmp_dir))
        )
        broker = stack.enter_context(redis_server(tmp)) if args.redis else None
        store_url, state_dir = str(tmp / "store"), str(tmp / "state")
        make_run(Store(store_url), elements=256, tensors=2)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSM_")}
        env.update(
            WSM_STORE_URL=store_url, WSM_STATE_DIR=state_dir, WSM_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT)
        )
        if broker:
            env["WSM_BROKER_URL"] = broker
        server = subprocess.Popen(
            [sys.executable, "-m", "wsm.cli", "serve", "--port", str(port)], env=env, cwd=ROOT
        )
        stack.callback(server.wait, 10)
        stack.callback(server.terminate)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the API did not become healthy in 60 s")
            time.sleep(0.2)
        latencies, statuses, wall = asyncio.run(hammer(url, args.clients, args.requests))
    ms = [x * 1000 for x in latencies]
    result: dict[str, Any] = {
        "broker": "redis" if args.redis else "embedded (sqla+sqlite)",
        "tmp_dir": args.tmp_dir or tempfile.gettempdir(),
        "clients": args.clients,
        "requests": len(ms),
        "statuses": statuses,
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "throughput_rps": round(len(ms) / wall, 1),
        "target_p99_ms": 100,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
