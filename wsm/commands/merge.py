"""``wsm merge``: merge explicit checkpoint files, or a run's window from the store.

wsm merge a.safetensors:0.5 b.safetensors:0.3 c.safetensors:0.2 -o out/
wsm merge run/iter_0001000:0.5 run/iter_0002000:0.5 --out-format torch_dist -o out/   # Megatron DCP
wsm merge --run r1 --curve 1-sqrt --window 80B --interval 10B          # publishes to the store
wsm merge ... --dry-run        # the plan (checkpoints, weights, bytes to read), nothing merged
wsm merge ... --mergekit-yaml merge.yaml   # the equivalent mergekit linear-merge config
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from typing import Any

from wsm.errors import UsageError
from wsm.store import layout

log = logging.getLogger("wsm.merge")

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``5GB`` -> 5e9, ``512MiB`` -> 512·2**20, ``1000`` -> 1000."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"--max-shard-size: {text!r} is not a size like 5GB or 512MiB")
    unit = m.group(2).lower()
    letter = unit[0] if unit and unit[0] in "kmgt" else " "
    scale = (1024 if "i" in unit else 1000) ** " kmgt".index(letter)
    return int(float(m.group(1)) * scale)


def parse_inputs(items: list[str]) -> tuple[list[str], list[float]]:
    """``PATH:WEIGHT`` pairs (the last ``:`` splits, so ``s3://…:0.5`` works); no weights = mean."""
    paths: list[str] = []
    weights: list[float | None] = []
    for item in items:
        path, sep, tail = item.rpartition(":")
        try:
            weight = float(tail) if sep else None
        except ValueError:
            weight = None
        if weight is None:
            path = item
        paths.append(path)
        weights.append(weight)
    if all(w is None for w in weights):
        return paths, [1.0 / len(paths)] * len(paths)
    if any(w is None for w in weights):
        missing = paths[weights.index(None)]
        raise UsageError(f"{missing}: give every input a weight (PATH:WEIGHT) or none (uniform mean)")
    return paths, [float(w) for w in weights if w is not None]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from wsm.commands.options import add_curve_arguments

    p = subparsers.add_parser(
        "merge",
        help="merge checkpoints into one model (explicit files, or a run's window from the store)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="PATH[:WEIGHT]",
        help="safetensors file, HF index or directory, or a PyTorch DCP directory (Megatron "
        "iter_<N>/, torchtitan step-<N>/, OLMo-core step<N>/model_and_optim/); local or URL",
    )
    p.add_argument("-o", "--output", help="output directory (default with --run: publish to the store)")
    g = p.add_argument_group("from the store")
    g.add_argument("--run", help="merge this run's checkpoints, chosen by curve and window")
    g.add_argument("--store", default=None, help="store URL (default WSM_STORE_URL)")
    g.add_argument("--window", help="window width in tokens, e.g. 80B")
    g.add_argument(
        "--interval", default=None, help="checkpoint spacing, e.g. 10B (default: every checkpoint)"
    )
    g.add_argument(
        "--count", type=int, default=None, help="number of checkpoints (interval = window / count)"
    )
    g.add_argument("--end", default=None, help="window end in tokens (default: the newest checkpoint)")
    g.add_argument(
        "--name", default=None, help="model name in the store (default anneal-<curve>-<window>-at-<end>)"
    )
    add_curve_arguments(p)
    o = p.add_argument_group("output and execution")
    o.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="output dtype of float tensors (auto: as the inputs)",
    )
    o.add_argument(
        "--accumulate", default="float32", choices=["float32", "float64"], help="accumulator dtype"
    )
    o.add_argument(
        "--out-format",
        default="safetensors",
        choices=["safetensors", "torch_dist"],
        help="safetensors (any input layout) or torch_dist: a DCP directory in Megatron-LM's layout "
        "that dist_checkpointing.load reads (keeps the inputs' chunk layout)",
    )
    o.add_argument("--max-shard-size", default=None, help="write HF shards of at most this size, e.g. 5GB")
    o.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    o.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="merge and write even if a checkpoint or the result holds NaN or Inf (default: refuse, naming the tensor)",
    )
    o.add_argument("--overwrite", action="store_true", help="replace an existing output")
    o.add_argument(
        "--no-hash-inputs",
        dest="hash_inputs",
        action="store_false",
        help="skip sha256 of local inputs for the manifest",
    )
    o.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="do not fsync the output (faster, less durable)",
    )
    o.add_argument("--dry-run", action="store_true", help="print the plan and exit without merging")
    o.add_argument("--mergekit-yaml", metavar="PATH", help="also write the equivalent mergekit config")
    o.add_argument("--json", action="store_true", help="print JSON instead of a table")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _plan(args: argparse.Namespace) -> tuple[Any, Any]:
    from merger.plan import plan_merge

    kwargs: dict[str, Any] = {
        "out_dtype": args.dtype,
        "accumulate": args.accumulate,
        "out_format": args.out_format,
        "max_shard_bytes": parse_bytes(args.max_shard_size) if args.max_shard_size else None,
        "allow_nonfinite": args.allow_nonfinite,
    }
    if args.run:
        if args.inputs:
            raise UsageError("give either input files or --run, not both")
        if not args.window:
            raise UsageError("--run needs --window (e.g. --window 80B)")
        from merger import store_io
        from wsm.commands.options import curve_from_args
        from wsm.store import open_store

        store = open_store(args.store)
        from anneal import external

        external.refresh(store, store, args.run, store.settings.external_sync_ttl_s)  # an external run's news
        selection = store_io.select(
            store,
            args.run,
            curve_from_args(args),
            args.window,
            interval=args.interval,
            count=args.count,
            end=args.end,
        )
        from anneal.resolve import window_warnings

        runs = {r.run: r for r in store.list_runs()}
        for warning in window_warnings(runs.get(args.run), selection):
            log.warning("%s", warning)
        return store_io.plan_selection(store, selection, **kwargs), store
    if not args.inputs:
        raise UsageError("nothing to merge: give PATH[:WEIGHT] inputs or --run")
    if not args.output and not args.dry_run and not args.mergekit_yaml:
        raise UsageError("give -o/--output for the merged model")
    paths, weights = parse_inputs(args.inputs)
    return plan_merge(paths, weights, **kwargs), None


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="merge", leave=False)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return bar, update


def _table(plan: Any, stats: Any = None) -> str:
    lines = [f"{'c_j':>10}  checkpoint"]
    lines += [f"{w:>10.6f}  {ck.uri}" for ck, w in zip(plan.inputs, plan.weights, strict=True)]
    lines.append(
        f"{len(plan.tensors)} tensors, {plan.bytes_to_read / 1e9:.3f} GB to read, "
        f"{plan.output_bytes / 1e9:.3f} GB out in {len(plan.shards)} file(s)"
    )
    if stats is not None:
        anon = f"{stats.peak_anon_rss / 2**20:.0f} MiB" if stats.peak_anon_rss else "n/a"
        lines.append(
            f"merged in {stats.seconds:.2f} s: {stats.gb_read:.3f} GB read at {stats.gb_per_s:.2f} GB/s, "
            f"peak RSS {stats.peak_rss / 2**20:.0f} MiB (anon {anon})"
        )
    return "\n".join(lines)


def _export_for_mergekit(store: Any, plan: Any, yaml_path: str) -> list[str]:
    """Store checkpoints as HF model directories beside the YAML (``<yaml>-models/<tokens>``), for mergekit.

    A full copy of each checkpoint: mergekit needs config.json and HF tensor names. Reused when present.
    """
    from trainer.export import export_hf

    root = os.path.abspath(os.path.splitext(yaml_path)[0] + "-models")
    dirs = []
    for ck in plan.inputs:
        run, tokens = ck.extra["run"], ck.extra["tokens"]
        target = os.path.join(root, str(tokens))
        if not os.path.isfile(os.path.join(target, "config.json")):
            log.info("exporting checkpoint %s of %s for mergekit to %s", tokens, run, target)
            export_hf(store, run, layout.checkpoint_dir(run, tokens), target)
        dirs.append(target)
    return dirs


def run(args: argparse.Namespace) -> int:
    plan, store = _plan(args)
    if args.mergekit_yaml:
        from merger.mergekit import write_mergekit_yaml

        dirs = _export_for_mergekit(store, plan, args.mergekit_yaml) if store is not None else None
        write_mergekit_yaml(plan, args.mergekit_yaml, dirs)
        log.info("wrote mergekit config %s", args.mergekit_yaml)
    if args.dry_run or (args.mergekit_yaml and not args.output and store is None):
        print(json.dumps(plan.describe(), indent=2) if args.json else _table(plan))
        return 0
    bar, on_progress = _progress(args.progress, plan.bytes_to_read)
    common = {"on_progress": on_progress, "threads": args.threads, "fsync": args.fsync}
    try:
        if args.output:
            from merger.engine import execute_merge
            from merger.hf_files import sidecar_files

            copied = sidecar_files(plan.inputs)
            if copied:
                log.info(
                    "copying %s from the newest input, so the output loads as a model", ", ".join(copied)
                )
            stats = execute_merge(
                plan,
                args.output,
                overwrite=args.overwrite,
                hash_inputs=args.hash_inputs,
                copy_files=copied,
                **common,
            )
            where = args.output
        else:
            from merger.store_io import publish_merge

            manifest, stats = publish_merge(store, plan, name=args.name, overwrite=args.overwrite, **common)
            where = f"{store.url}/{manifest.dir}"
    finally:
        if bar is not None:
            bar.close()
    log.info("merged %d checkpoints into %s", len(plan.inputs), where)
    if args.json:
        print(json.dumps({"output": where, "plan": plan.describe(), "stats": stats.to_dict()}, indent=2))
    else:
        print(_table(plan, stats) + f"\noutput: {where}")
    return 0
