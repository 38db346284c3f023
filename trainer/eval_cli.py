"""``wsm evaluate MODEL [MODEL ...]``: SFT + all metrics for stored checkpoints or models, printed and stored.

Several models are evaluated one after the other in this one process: torch, the model code and
the run's tokenised evaluation data are loaded once (trainer/evaluate.py caches the data per run
and config), not once per model. Each MODEL is a store directory (``runs/r/checkpoints/000000000000204800``, ``runs/r/models/anneal-80B``)
or a short spec: ``RUN`` (newest checkpoint), ``RUN/latest``, ``RUN/TOKENS`` (a checkpoint by token
count, e.g. ``r/200k``) or ``RUN/NAME`` (an annealed or baseline model).

MODEL may also be a Hugging Face Llama directory, e.g. a ``wsm export`` or a mergekit merge of
exports (``./merged``): it is evaluated in the context of a run, whose tokenizer, held-out data and
pre-training LR the evaluation uses, and its record is stored with that run's evaluations as
``hf:<absolute path>``. The run is ``--run``, or the one a ``wsm export`` wrote into its config.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

MODEL_HELP = (
    "store dir (runs/R/checkpoints/T, runs/R/models/N) or RUN, RUN/latest, RUN/TOKENS (e.g. r1/200k), "
    "RUN/NAME (model), or a Hugging Face Llama directory (./DIR)"
)
RUN_HELP = (
    "the run whose tokenizer and data go with a Hugging Face directory MODEL "
    "(default: the run its config names, as `wsm export` writes it)"
)


def parse_model_spec(store: Any, spec: str, run: str | None = None) -> tuple[str, str]:
    """``(run, model dir)`` of a MODEL argument (see the module docstring); ``run`` is for a
    Hugging Face directory, whose model dir is ``hf:<absolute path>``."""
    from trainer import hf_dir
    from trainer.load import available, get_run, split_model_dir
    from trainer.units import parse_tokens
    from wsm.store import checkpoint_name, layout

    if hf_dir.looks_like_hf_dir(spec):
        model = hf_dir.open_hf_dir(spec)
        run = run or model.run_hint
        if run is None:
            runs = ", ".join(r.run for r in store.list_runs()) or "none"
            raise ValueError(
                f"{model.path} is a Hugging Face directory: name the run whose tokenizer and data "
                f"evaluate it with --run RUN (runs: {runs})"
            )
        get_run(store, run)
        return run, model.dir
    spec = spec.strip().rstrip("/")
    if spec.startswith("runs/"):
        run, _, _ = split_model_dir(spec)
        return run, spec
    run, _, rest = spec.partition("/")
    if rest in ("", "latest"):
        get_run(store, run)  # an unknown run is named as such, with the runs there are
        latest = store.latest_checkpoint(run)
        if latest is None:
            raise ValueError(f"run {run!r} has no checkpoints yet ({available(store, run)})")
        return run, latest.dir
    if "/" in rest:
        raise ValueError(f"cannot read MODEL {spec!r}; expected {MODEL_HELP}")
    try:
        tokens = parse_tokens(rest, name="MODEL")
    except ValueError:
        return run, layout.model_dir(run, rest)
    if store.exists(f"{layout.model_dir(run, rest)}/{layout.MANIFEST}"):
        return run, layout.model_dir(run, rest)  # a model whose name reads like a token count
    return run, f"runs/{run}/checkpoints/{checkpoint_name(tokens)}"


def load_eval_config(path: str | None, overrides: list[str], suite: str | None) -> Any:
    """EvalConfig from an optional YAML file, ``--set`` overrides and ``--suite``."""
    from trainer.config import apply_overrides
    from wsm.eval_config import EvalConfig

    tree: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise ValueError(f"evaluation config {path}: no such file")
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: an evaluation config must be a mapping")
        tree = loaded or {}
    tree = apply_overrides(tree, overrides)
    if suite:
        tree["suite"] = suite
    return EvalConfig.model_validate(tree)


def format_metrics(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in metrics.items())


def _run(args: argparse.Namespace) -> int:
    import torch

    from trainer.evaluate import evaluate_model
    from trainer.load import resolve
    from wsm.store import open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    store = open_store(args.store)
    # Every argument is checked (the model exists) before the first, slow, evaluation starts.
    targets = list(dict.fromkeys(parse_model_spec(store, spec, args.run) for spec in args.model))
    for run, model_dir in targets:
        resolve(store, run, model_dir)
    config = load_eval_config(args.config, args.set, args.suite)
    manifests = []
    for i, (run, model_dir) in enumerate(targets, start=1):
        if len(targets) > 1:
            log.info("evaluating %d of %d: %s", i, len(targets), model_dir)
        manifest = evaluate_model(
            store, run, model_dir, config, force=args.force, progress=_progress_logger(model_dir)
        )
        manifests.append(manifest)
        if not args.json:
            _print(manifest, first=i == 1)
    if args.json:
        docs = [json.loads(m.model_dump_json()) for m in manifests]
        print(json.dumps(docs[0] if len(args.model) == 1 else docs, indent=1))
    return 0


def _print(manifest: Any, *, first: bool) -> None:
    if not first:
        print()
    print(f"{manifest.model_id}  ({manifest.dir}, {manifest.duration_s:.1f}s)")
    print(format_metrics(manifest.metrics))
    if manifest.extra.get("skipped"):
        print("skipped: " + json.dumps(manifest.extra["skipped"]))
    suite = manifest.extra.get("suite") or {}
    if suite.get("dropped"):
        print("dropped SFT records: " + json.dumps(suite["dropped"]))


def _progress_logger(model_dir: str) -> Callable[[str, float], None]:
    """A progress callback that logs one line per whole percent (SFT reports every step)."""
    last: list[tuple[str, int]] = []

    def report(phase: str, fraction: float) -> None:
        key = (phase, int(100 * fraction))
        if not last or last[0] != key:
            last[:] = [key]
            log.info("evaluate %s: %s %d%%", model_dir, phase, key[1])

    return report


def register(subparsers: Any) -> None:
    """Add ``wsm evaluate``."""
    from trainer.config import describe_fields
    from wsm.eval_config import EvalConfig

    parser = subparsers.add_parser(
        "evaluate",
        help="fine-tune and evaluate stored checkpoints or models (cached in the store)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (--set key=value):\n" + "\n".join(describe_fields(EvalConfig)),
    )
    parser.add_argument("model", nargs="+", help=MODEL_HELP + "; several are evaluated in one process")
    parser.add_argument("--suite", help="SFT suite: builtin (default) or a .json/.jsonl file or directory")
    parser.add_argument("--config", help="YAML file with EvalConfig fields")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. sft.lr=1e-4 or sharpness.samples=10",
    )
    parser.add_argument("--run", help=RUN_HELP)
    parser.add_argument("--store", help="store URL (default WSM_STORE_URL)")
    parser.add_argument("--force", action="store_true", help="recompute and replace a stored result")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the stored EvalManifest as JSON (a list for several models)",
    )
    parser.set_defaults(func=_run)
