"""``wsm runs``: the store's runs, and registering runs trained elsewhere (bring your own run).

    wsm runs list
    wsm runs add llama-8b s3://team-ckpts/llama-8b [--layout megatron] [--tokenizer tokenizer.json]
    wsm runs add titan-1b /lustre/titan/checkpoint --tokens-per-step 4M
    wsm runs sync llama-8b [--recheck]

An external run's checkpoints stay where its trainer writes them (Megatron-LM ``iter_<7 digits>/``,
torchtitan ``step-<N>/``, OLMo-core ``step<N>/model_and_optim/``): the store gets one manifest per
checkpoint pointing at it. New checkpoints are found by the workers' sweep, by ``POST /anneal``,
by ``wsm merge --run``, or now with ``wsm runs sync``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LAYOUTS = ("auto", "megatron", "torchtitan", "olmo-core")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list runs; register a run trained elsewhere (Megatron-LM, torchtitan, OLMo-core)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", default=None, help="store URL (default WSM_STORE_URL)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="register an external run from its checkpoint directory")
    add.add_argument("name", help="run name in the store")
    add.add_argument("source", help="the run's checkpoint directory: a path or an s3:// URI")
    add.add_argument("--layout", default="auto", choices=LAYOUTS, help="checkpoint layout (default: detect)")
    add.add_argument(
        "--tokens-per-step",
        default=None,
        help="tokens per training step, e.g. 4M (required for torchtitan and OLMo-core; "
        "Megatron's own arguments give it otherwise)",
    )
    add.add_argument("--tokenizer", default=None, help="a Hugging Face tokenizer.json (evaluation needs one)")
    add.add_argument("--description", default="", help="free-text description")
    add.add_argument("--overwrite", action="store_true", help="register an external run of that name again")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(func=run_add)

    sync = sub.add_parser("sync", help="list an external run's checkpoint directory again now")
    sync.add_argument("name", help="run name")
    sync.add_argument(
        "--recheck", action="store_true", help="also re-read every known checkpoint (finds ones saved again)"
    )
    sync.add_argument("--json", action="store_true", help="print JSON")
    sync.set_defaults(func=run_sync)

    ls = sub.add_parser("list", help="the store's runs")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)


def _store(args: argparse.Namespace) -> Any:
    from wsm.store import open_store

    return open_store(args.store)


def _report(args: argparse.Namespace, verb: str, run: Any, report: Any) -> int:
    from theory import format_tokens

    if args.json:
        payload = {
            "run": run.run,
            "source": run.source.model_dump(mode="json") if run.source else None,
            "added": report.added,
            "removed": report.removed,
            "replaced": report.replaced,
            "errors": report.errors,
            "checkpoints": report.checkpoints,
        }
        print(json.dumps(payload, indent=2))
        return 0
    assert run.source is not None
    added = ", ".join(format_tokens(t) for t in report.added) or "none"
    print(
        f"{verb} run {run.run}: {run.source.layout} checkpoints at {run.source.uri}; "
        f"{report.checkpoints} checkpoint(s), new: {added}"
    )
    if report.removed:
        print(f"gone from the source: {', '.join(format_tokens(t) for t in report.removed)}")
    if report.replaced:
        print(f"saved again: {', '.join(format_tokens(t) for t in report.replaced)}")
    for line in report.errors:
        print(f"skipped: {line}", file=sys.stderr)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from anneal import external
    from theory import parse_tokens

    per_step = parse_tokens(args.tokens_per_step, name="--tokens-per-step") if args.tokens_per_step else None
    run, report = external.register(
        _store(args),
        args.name,
        args.source,
        layout=args.layout,
        tokens_per_step=per_step,
        tokenizer=args.tokenizer,
        description=args.description,
        overwrite=args.overwrite,
    )
    return _report(args, "registered", run, report)


def run_sync(args: argparse.Namespace) -> int:
    from anneal import external
    from anneal.resolve import choose_run

    store = _store(args)
    name = choose_run(store, args.name)
    run = store.get_run(name)
    if run.source is None:
        raise ValueError(f"run {name!r} was trained by wsm; only external runs are synced")
    return _report(args, "synced", run, external.sync(store, run, recheck=args.recheck))


def run_list(args: argparse.Namespace) -> int:
    from theory import format_tokens

    store = _store(args)
    rows = []
    for run in store.list_runs():
        checkpoints = store.list_checkpoints(run.run)
        rows.append(
            {
                "run": run.run,
                "kind": run.source.layout if run.source else "wsm",
                "checkpoints": len(checkpoints),
                "latest_tokens": checkpoints[-1].tokens if checkpoints else None,
                "source": run.source.uri if run.source else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'run':<24} {'kind':<11} {'checkpoints':>11} {'latest':>9}  source")
    for r in rows:
        latest = format_tokens(r["latest_tokens"]) if r["latest_tokens"] is not None else "-"
        print(f"{r['run']:<24} {r['kind']:<11} {r['checkpoints']:>11} {latest:>9}  {r['source'] or ''}")
    return 0
