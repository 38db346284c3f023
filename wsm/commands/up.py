"""``wsm up``: the whole service on one machine with no external services.

Starts the trainer (tiny preset on the built-in corpus), a Celery worker on the embedded
transport, and the API with the dashboard, all sharing one local store. Ctrl-C stops them in
order; running it again resumes the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.request
from pathlib import Path

from wsm.settings import get_settings
from wsm.supervisor import Component, Supervisor

log = logging.getLogger("wsm.up")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run trainer, worker, API and dashboard together on embedded defaults",
        description=(
            "Start everything on one machine: a local store, the embedded Celery transport, a worker, "
            "the API with the dashboard, and a tiny WSO pre-training run on the built-in corpus."
        ),
    )
    parser.add_argument("--store", default=None, help="store URL or directory (default: WSM_STORE_URL)")
    parser.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--run", default="demo", help="run name of the trainer (default demo)")
    parser.add_argument(
        "--config", default=None, help="trainer config: a YAML path or a packaged name (default demo)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="trainer config override"
    )
    parser.add_argument("--no-train", action="store_true", help="only serve an existing store (no trainer)")
    parser.add_argument("--no-worker", action="store_true", help="do not start a worker")
    parser.add_argument("--no-api", action="store_true", help="do not start the API")
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds each process gets to stop (default 30)"
    )
    parser.set_defaults(func=run)


def _wsm(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsm.cli", *args]


def build_components(args: argparse.Namespace, env: dict[str, str]) -> list[Component]:
    """The processes ``wsm up`` runs, in shutdown order (trainer first, API last)."""
    components: list[Component] = []
    if not args.no_train:
        train = ["train", "--config", args.config or "demo", "--set", f"run={args.run}"]
        for item in args.set:
            train += ["--set", item]
        components.append(Component("trainer", _wsm(*train), env))
    if not args.no_worker:
        components.append(Component("worker", _wsm("worker", "--queues", "merge,eval"), env))
    if not args.no_api:
        components.append(Component("api", _wsm("serve", "--host", args.host, "--port", str(args.port)), env))
    return components


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def example_window(args: argparse.Namespace) -> tuple[str, str, str]:
    """(save interval, the first window worth annealing, the run length from which it is) of the trainer
    config ``wsm up`` runs: theory's suggestion, the same the API serves for a run (GET /runs/{run})."""
    from theory import format_tokens_exact as format_tokens
    from theory import suggest_window
    from trainer.config import load_config

    cfg = load_config(args.config or "demo", [f"run={args.run}", *args.set])
    every = cfg.checkpoint.save_every
    first = suggest_window(0, every, warmup=cfg.schedule.warmup)
    return format_tokens(every), format_tokens(first.window), format_tokens(first.ready_at)


def _announce(url: str, token: str | None, args: argparse.Namespace) -> None:
    # The token itself is never logged: the example reads it from the environment.
    auth = ' -H "authorization: Bearer $WSM_API_TOKEN"' if token else ""
    log.info("dashboard: %s/", url)
    if args.no_train:
        return
    every, window, ready_at = example_window(args)
    body = json.dumps({"curve": "1-sqrt", "window": window})
    log.info(
        "the trainer saves a checkpoint every %s tokens; once the run passes %s tokens, anneal its recent "
        "part (the papers anneal over the last 10-20%%; earlier, the oldest checkpoints weigh heavily):\n"
        "  curl -X POST %s/anneal -H 'content-type: application/json'%s -d '%s'\n"
        "  or: wsm anneal --curve 1-sqrt --window %s --wait",
        every,
        ready_at,
        url,
        auth,
        body,
        window,
    )


def _resolve_store(value: str | None) -> str:
    url = value or get_settings().store_url
    if "://" not in url or url.startswith("file://"):
        path = Path(url.removeprefix("file://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return url


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    store_url = _resolve_store(args.store)
    # Every child must agree on the store and on the embedded broker's state directory.
    env = {"WSM_STORE_URL": store_url, "WSM_STATE_DIR": str(Path(settings.state_dir).expanduser().resolve())}
    if settings.broker_url:
        env["WSM_BROKER_URL"] = settings.broker_url
    if not args.no_train:
        example_window(args)  # a bad --config or --set fails here, before anything starts
    if not args.no_api:
        from api.exposure import check_token

        check_token(settings.api_token)  # a placeholder: one line here, not a crash of the API child
    components = build_components(args, env)
    if not components:
        raise ValueError("nothing to start: --no-train, --no-worker and --no-api were all given")
    log.info("store: %s", store_url)
    secrets = (settings.api_token, settings.s3_secret_access_key)
    supervisor = Supervisor(components, grace_seconds=args.grace, secrets=secrets)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    supervisor.start()

    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    announced = args.no_api
    started = time.monotonic()

    def announce_when_ready() -> None:
        nonlocal announced
        if not announced and _healthy(url):
            announced = True
            _announce(url, settings.api_token, args)
        elif not announced and time.monotonic() - started > 120:
            log.warning("the API has not answered %s/healthz after 2 minutes", url)
            announced = True

    code = supervisor.wait(on_tick=announce_when_ready)
    log.info("stopped")
    return code
