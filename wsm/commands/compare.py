"""``wsm compare``: every merge of a run beside its real-decay twin, as a table.

    wsm compare [--run r1] [--metric pretrain_val_loss] [--metric task_accuracy] [--api] [--json]

Reads the store (``--store``, default ``WSM_STORE_URL``) or, with ``--api``, the service
(``GET /runs/{run}/compare`` on ``WSM_API_URL``); both give the same numbers (anneal/pairing.py).
Per metric: WSO checkpoint, merge and real decay (± sd over seeds / repeated evaluations), the
gap in %, the share of the WSO → decay difference the merge recovers, and whether that
difference is within the noise.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from wsm.errors import UsageError

HEADER = ("merge", "window", "end", "WSO", "merge", "real decay", "gap", "recovered", "noise")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="merges against real decay: both values, gap, share recovered, noise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", default=None, help="run name (default: the only/newest run)")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to show (repeatable; default pretrain_val_loss, 'all' for every metric)",
    )
    parser.add_argument("--store", default=None, help="store URL (default WSM_STORE_URL)")
    parser.add_argument("--api", action="store_true", help="ask the API instead of reading the store")
    parser.add_argument("--url", default=None, help="API base URL with --api (default WSM_API_URL)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run)


def _from_store(args: argparse.Namespace) -> Any:
    from anneal import resolve
    from anneal.evidence import RunEvidence
    from anneal.pairing import comparison
    from wsm.store import open_store

    store = open_store(args.store)
    return comparison(RunEvidence.load(store, resolve.choose_run(store, args.run)))


def _from_api(args: argparse.Namespace) -> Any:
    import httpx

    from anneal.pairing import Comparison
    from wsm.settings import get_settings

    settings = get_settings()
    base = (args.url or settings.api_url).rstrip("/")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            run = args.run or _newest_run(client)
            response = client.get(f"/runs/{run}/compare")
    except httpx.HTTPError as e:
        raise UsageError(f"cannot reach the API at {base}: {e}") from None
    if response.status_code >= 400:
        try:
            raise UsageError(f"HTTP {response.status_code}: {response.json().get('detail')}")
        except ValueError:
            raise UsageError(f"HTTP {response.status_code}: {response.text[:200]}") from None
    return Comparison.model_validate(response.json())


def _newest_run(client: Any) -> str:
    runs = client.get("/runs").json().get("runs") or []
    if not runs:
        raise UsageError("the store has no runs yet")
    return str(max(runs, key=lambda r: r["created_at"])["run"])


def _number(value: float | None, metric: str, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    if "loss" in metric:
        return f"{value:+.3f}" if signed else f"{value:.3f}"  # losses: three decimals, always
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _measure(m: Any, metric: str) -> str:
    if m is None:
        return "–"
    text = _number(m.mean, metric)
    if m.sd is not None:
        text += f"±{_number(m.sd, metric)} (n={m.n})"
    elif m.reported_se is not None:
        text += f"±{_number(m.reported_se, metric)} (se)"  # a benchmark's own standard error
    return text + ("*" if m.source == "trainer" else "")


def _noise(stats: Any, metric: str) -> str:
    if stats.within_noise is None:
        return "no estimate"
    where = f"{_number(stats.noise, metric)} ({stats.noise_from})"
    return f"WITHIN NOISE {where}" if stats.within_noise else f"ok, noise {where}"


def table(comparison: Any, metric: str) -> list[str]:
    """The lines of one metric's table."""
    from theory import format_tokens

    direction = {True: "lower is better", False: "higher is better", None: "direction unknown"}
    rows: list[tuple[str, ...]] = []
    lower = None
    for row in comparison.rows:
        stats = row.metrics.get(metric)
        if stats is None:
            continue
        lower = stats.lower_is_better
        spacing = f" / {format_tokens(row.interval)}" if row.interval else ""
        rows.append(
            (
                f"{row.curve}{spacing} ({row.checkpoints} ckpts)",
                format_tokens(row.window),
                format_tokens(row.window_end),
                _measure(stats.wso, metric),
                _measure(stats.merge, metric),
                _measure(stats.decay, metric),
                f"{stats.gap_pct:+.2f}%" if stats.gap_pct is not None else "–",
                f"{100 * stats.recovered:.0f}%" if stats.recovered is not None else "–",
                _noise(stats, metric),
            )
        )
    if not rows:
        return [f"{metric}: no merge with a real-decay twin has this metric"]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [f"{metric} ({direction[lower]})"]
    for r in [HEADER, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return lines


def run(args: argparse.Namespace) -> int:
    comparison = _from_api(args) if args.api else _from_store(args)
    if args.json:
        print(json.dumps(comparison.model_dump(mode="json"), indent=1))
        return 0
    wanted = args.metric or ["pretrain_val_loss"]
    metrics = comparison.metrics if "all" in wanted else wanted
    unknown = [m for m in metrics if m not in comparison.metrics]
    if unknown and comparison.rows:
        raise UsageError(f"--metric {unknown[0]!r}: run {comparison.run} has {', '.join(comparison.metrics)}")
    print(f"run {comparison.run}: {len(comparison.rows)} merge(s) with a real-decay twin")
    for metric in metrics:
        print()
        print("\n".join(table(comparison, metric)))
    print()
    print(
        f"gap = (merge - decay) / |decay|; recovered = (WSO - merge) / (WSO - decay); within noise: "
        f"|WSO - decay| <= {comparison.noise_sigmas:g} x noise. * = the trainer's own validation loss."
    )
    if comparison.unpaired:
        print(
            f"{comparison.unpaired} merge(s) have no twin yet: "
            "wsm train branch --run RUN --from <window start> --window <width> --curve <curve>"
        )
    if comparison.evals_excluded:
        print(f"{comparison.evals_excluded} evaluation(s) made with another configuration are left out")
    return 0
