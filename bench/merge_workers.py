"""Scaling of one big merge across Celery worker processes (split into parts, chord, atomic publish).

    python bench/merge_workers.py                       # 1, 2, 4 workers; 4 checkpoints x 64 MB
    python bench/merge_workers.py --size-mb 256 --workers 1,2,4 --redis

For each worker count N: a fresh store with the same synthetic checkpoints, N ``wsm worker``
processes (concurrency 1, queue ``merge``), ``merge_parts = N`` and a split threshold of one
byte, so the merge runs as N parts on N processes plus the publishing step. The job is submitted
like the API does and timed until its record says done. Prints input GB/s overall and per worker.
The machine's core count bounds the speed-up (each part is CPU- and memory-bandwidth bound).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from anneal import jobs, resolve  # noqa: E402
from anneal.broker.enqueue import CeleryEnqueuer  # noqa: E402
from anneal.outbox import Publisher  # noqa: E402
from anneal.submit import submit  # noqa: E402
from tests.api.fixtures import M, make_run  # noqa: E402
from tests.api.worker import Worker, redis_server, service_env  # noqa: E402
from wsm.settings import Settings  # noqa: E402
from wsm.store import Store  # noqa: E402


def one(
    template: Path, tmp: Path, workers: int, broker: str | None, enqueuer: CeleryEnqueuer
) -> dict[str, Any]:
    store_dir = tmp / f"store-{workers}"
    shutil.copytree(template, store_dir)
    settings = Settings(
        _env_file=None,
        store_url=str(store_dir),
        state_dir=str(tmp / "state"),  # type: ignore[call-arg]
        broker_url=broker,
        merge_split_bytes=1,
        merge_parts=workers,
        job_heartbeat_s=1.0,
    )
    store = Store(settings.store_url, settings=settings)
    procs = [
        Worker(service_env(settings, log_level="WARNING"), tmp / f"w{workers}-{i}.log", queues="merge")
        for i in range(workers)
    ]
    try:
        time.sleep(8)  # let every worker connect before the parts are handed out
        spec = resolve.resolve(
            store,
            curve=resolve.curve_spec("1-sqrt", alpha=None, floor=0.0),
            request=resolve.window_request("30M", None, None, None),
            evaluate=False,
        )
        start = time.perf_counter()
        publisher = Publisher(lambda: enqueuer)
        record, _ = submit(store, spec, publisher)
        publisher.flush()
        while (record := jobs.load(store, spec.run, record.job_id)).state not in ("done", "failed"):
            time.sleep(0.1)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            p.stop()
    if record.state != "done":
        raise SystemExit(f"job failed: {record.error}")
    model = store.get_model(spec.run, spec.model_name)
    gb = model.bytes_read / 1e9
    return {
        "workers": workers,
        "parts": workers,
        "wall_s": round(wall, 2),
        "input_gb": round(gb, 3),
        "gb_per_s": round(gb / wall, 3),
        "gb_per_s_per_worker": round(gb / wall / workers, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=64, help="size of one checkpoint in MB (float32)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--redis", action="store_true", help="use a throwaway redis-server as the broker")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsm-bench-workers-")))
        broker = stack.enter_context(redis_server(tmp)) if args.redis else None
        template = tmp / "template"
        elements = args.size_mb * 2**20 // 4 // 16
        make_run(
            Store(str(template)),
            tokens=[i * 10 * M for i in range(1, 5)],
            elements=elements - elements % 64,
            tensors=16,
        )
        # One broker (and one Celery app) for every run: the queue is empty between runs.
        enqueuer = CeleryEnqueuer(Settings(_env_file=None, state_dir=str(tmp / "state"), broker_url=broker))  # type: ignore[call-arg]
        results = [one(template, tmp, n, broker, enqueuer) for n in counts]
    base = results[0]["gb_per_s"]
    for r in results:
        r["speedup"] = round(r["gb_per_s"] / base, 2)
    print(
        json.dumps(
            {
                "broker": "redis" if broker else "embedded",
                "cpus": os.cpu_count(),
                "load_avg_1m": os.getloadavg()[0],
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
