"""``wsm worker [--queues merge,eval]``: a Celery worker for anneal jobs, with the recovery sweep.

Every pool process as it starts (a killed child's replacement too), and the main process once ready,
removes the staging leftovers of dead writers on this host (a killed predecessor's); a background
thread then sweeps job records for lost jobs (expired lease, or queued
with no sign of life) and re-enqueues them, at start and every ``recovery_interval_s``
(anneal/recovery.py, Recovery); every sweep also removes scratch dirs of finished attempts, and once
an hour killed writers' leftovers older than the broker visibility timeout go.

``--pool prefork`` (the default) is Celery's prefork pool with locks a killed child cannot keep
(anneal/broker/pool.py): killing any process of the worker never wedges it. Started as root, it
says so in one line instead of Celery's block of text (anneal/broker/privileges.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from typing import Any

from wsm.errors import UsageError

log = logging.getLogger("wsm.worker")

QUEUES = ("merge", "eval")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a Celery worker that merges and evaluates anneal jobs",
        description="Consume anneal jobs. Broker: WSM_BROKER_URL (unset: the embedded SQLite broker in WSM_STATE_DIR).",
    )
    parser.add_argument(
        "--queues", default="merge,eval", help="comma-separated queues: merge, eval (default both)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="processes per worker (default 1: merges use all cores)"
    )
    parser.add_argument(
        "--pool",
        default="prefork",
        choices=["prefork", "solo", "threads"],
        help="Celery pool (default prefork)",
    )
    parser.add_argument("--name", default=None, help="worker node name (default wsm-<pid>@<host>)")
    parser.add_argument("--no-recovery", action="store_true", help="do not sweep for lost jobs")
    parser.add_argument(
        "--banner",
        action="store_true",
        help="print Celery's start-up banner (transport, queues, tasks); wsm's own start-up line says "
        "the queues and broker",
    )
    parser.set_defaults(func=run)


def _cleanup_dead_writers(**_: Any) -> None:
    """In every new pool process (a killed child's replacement too): its dead predecessors' staging goes."""
    from anneal.broker.tasks import recovery

    try:
        recovery().startup_cleanup()
    except Exception:
        log.warning("start-up cleanup failed", exc_info=True)


def _recovery_loop(stop: threading.Event) -> None:
    from anneal.broker.tasks import recovery
    from wsm.settings import get_settings

    sweeper = recovery()
    interval = get_settings().recovery_interval_s
    _cleanup_dead_writers()  # a restarted worker removes its killed predecessors' staging at once
    while True:
        try:
            resent = sweeper.sweep()
            if resent:
                log.info("recovery: re-enqueued %d job(s): %s", len(resent), ", ".join(resent))
            sweeper.cleanup()
        except Exception:  # the store or broker may be briefly unavailable; try again next round
            log.warning("recovery sweep failed", exc_info=True)
        if stop.wait(interval):
            return


def run(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    bad = [q for q in queues if q not in QUEUES]
    if bad or not queues:
        raise UsageError(f"--queues: unknown queue(s) {bad or queues}; choose from {', '.join(QUEUES)}")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    from celery.signals import worker_process_init, worker_ready, worker_shutdown

    from anneal.broker.app import redact
    from anneal.broker.pool import POOL
    from anneal.broker.privileges import privileges_explained
    from anneal.broker.tasks import app

    if args.pool == "prefork":  # Celery's prefork pool, minus the lock a killed child can keep
        app.conf.worker_pool = POOL

    stop = threading.Event()

    def start_recovery(**_: Any) -> None:
        threading.Thread(target=_recovery_loop, args=(stop,), name="wsm-recovery", daemon=True).start()

    if not args.no_recovery:
        worker_ready.connect(start_recovery, weak=False)
    worker_shutdown.connect(lambda **_: stop.set(), weak=False)
    worker_process_init.connect(_cleanup_dead_writers, weak=False)
    name = args.name or f"wsm-{os.getpid()}@{socket.gethostname()}"
    log.info("worker %s: queues %s, broker %s", name, ",".join(queues), redact(str(app.conf.broker_url)))
    with privileges_explained(app.conf.accept_content):  # root: one line, not Celery's block of text
        app.worker_main(
            [
                # Celery's global --quiet drops only its 25-line banner, the bulk of `wsm up`'s first screen.
                *([] if args.banner else ["--quiet"]),
                "worker",
                f"--queues={','.join(queues)}",
                f"--concurrency={args.concurrency}",
                f"--pool={args.pool}",
                f"--hostname={name}",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ]
        )
    return 0
