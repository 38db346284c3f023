"""``wsm anneal``: ask the API for an anneal and (with ``--wait``) follow it to the end.

    wsm anneal --curve 1-sqrt --window 80B [--run r1] [--interval 10B] [--wait]

Talks to ``WSM_API_URL`` with ``WSM_API_TOKEN``; prints the chosen checkpoints and weights, then
the stage and progress of the job until it is done (exit 0) or failed (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from wsm.commands.options import add_curve_arguments, add_window_arguments, parse_coefficients
from wsm.errors import UsageError

TERMINAL = ("done", "failed")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "anneal",
        help="request an annealed model from the API (and follow the job)",
        description="POST /anneal on the wsm API. Example: wsm anneal --curve 1-sqrt --window 80B --wait",
    )
    add_curve_arguments(parser)
    add_window_arguments(parser)
    parser.add_argument("--run", default=None, help="run name (default: the only/newest run)")
    parser.add_argument("--no-eval", action="store_true", help="do not evaluate the models")
    parser.add_argument(
        "--out-format",
        default=None,
        metavar="FORMAT",
        # Not argparse choices: the API checks the name against the merger's formats (the one list),
        # and the command line stays free of the merger's imports (torch).
        help="layout of the annealed model: safetensors (default) or torch_dist (Megatron-LM's DCP "
        "layout, for --load); the API names the formats it has",
    )
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status checks (default 1)")
    parser.add_argument("--url", default=None, help="API base URL (default WSM_API_URL)")
    parser.add_argument("--json", action="store_true", help="print the final job as JSON")
    parser.set_defaults(func=run)


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    curve: Any = list(parse_coefficients(args.coefficients)) if args.coefficients else args.curve
    body: dict[str, Any] = {
        "curve": curve,
        "window": args.window,
        "floor": args.floor,
        "evaluate": not args.no_eval,
    }
    for key in ("run", "interval", "count", "end", "alpha", "out_format"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return body


def _describe(job: dict[str, Any]) -> str:
    sel = job["selection"]
    lines = [
        f"job {job['job_id']} on run {job['run']}: {job['state']} ({'new' if job.get('created') else 'existing'})",
        f"curve {sel['curve_label']}, window {sel['window']} tokens [{sel['window_start']}, {sel['window_end']}]",
    ]
    lines += [f"  {c['tokens']:>16}  c={c['c']:.6f}" for c in sel["checkpoints"]]
    return "\n".join(lines)


def _value(name: str, value: float) -> str:
    """Losses with three decimals (4.300 never reads like 4.3), other metrics with four digits."""
    return f"{value:.3f}" if "loss" in name else f"{value:.4g}"


def _error(response: Any) -> str:
    try:
        body = response.json()
        return f"HTTP {response.status_code} {body.get('error')}: {body.get('detail')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _follow(client: Any, job: dict[str, Any], poll: float) -> dict[str, Any]:
    """Poll the job until it ends: a progress bar on a terminal, else one line per change of stage."""
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}", leave=False)
    last = None
    try:
        while job["state"] not in TERMINAL:
            time.sleep(poll)
            polled = client.get(f"/anneal/{job['job_id']}")
            if polled.status_code >= 400:
                raise UsageError(_error(polled))
            job = polled.json()
            if bar is not None:
                bar.set_description_str(job["stage"], refresh=False)
                bar.n = min(100.0, float(job["progress"]))
                bar.refresh()
                continue
            line = f"{job['stage']} {job['progress']:.0f}% {job['message']}"
            if line != last:
                print(line, flush=True)
                last = line
    finally:
        if bar is not None:
            bar.close()
    return job


def run(args: argparse.Namespace) -> int:
    import httpx

    from wsm.settings import get_settings

    settings = get_settings()
    base = (args.url or settings.api_url).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        try:
            response = client.post("/anneal", json=build_body(args))
        except httpx.HTTPError as e:
            raise UsageError(f"cannot reach the API at {base}: {e}") from None
        if response.status_code >= 400:
            raise UsageError(_error(response))
        job = response.json()
        print(_describe(job))
        for warning in job.get("warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
        if args.wait and job["state"] not in TERMINAL:
            job = _follow(client, job, args.poll)
    if args.json:
        print(json.dumps(job, indent=2))
    elif job["state"] == "done":
        print(f"model {job['model_id']}")
        for which, ev in (job.get("evaluations") or {}).items():
            if ev:
                print(f"  {which}: " + ", ".join(f"{k}={_value(k, v)}" for k, v in ev["metrics"].items()))
    if job["state"] == "failed":
        print(f"failed: {job['error']}", file=sys.stderr)
        return 1
    return 0
