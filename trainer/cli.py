"""``wsm train``: pre-train a run (WSO by default), or ``wsm train branch`` for a real-decay baseline.

Examples::

    wsm train --config demo --set train_tokens=5M --set optim.lr=3e-4
    torchrun --nproc-per-node 2 -m wsm.cli train --config run.yaml --set parallel.tensor_parallel=2
    wsm train branch --run demo --from 400k --window 200k --curve 1-sqrt
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from trainer.config import MEGATRON_CURVES

log = logging.getLogger(__name__)

_EPILOG_HEAD = "config keys (YAML file and --set key=value):"


def _train(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.loop import Trainer

    cfg = load_config(args.config, args.set)
    result = Trainer(cfg).train()
    log.info(
        "done at step %d (%d tokens)%s",
        result.step,
        result.tokens,
        ", stopped by signal" if result.stopped_by_signal else "",
    )
    return 0


def _branch(args: argparse.Namespace) -> int:
    from trainer.branch import decay_branch
    from wsm.store import open_store

    overrides: dict[str, Any] = {}
    if args.threads:
        overrides["threads"] = args.threads
    result = decay_branch(
        args.run,
        fork=args.fork,
        window=args.window,
        curve=args.curve,
        min_lr_factor=args.min_lr_factor,
        name=args.name,
        store=open_store(args.store),
        overrides=overrides,
        overwrite=args.overwrite,
    )
    if result.manifest is not None:
        log.info("baseline model: %s", result.manifest.dir)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "train_command", None) == "branch":
        return _branch(args)
    return _train(args)


def register(subparsers: Any) -> None:
    """Add ``train`` (and ``train branch``) to the ``wsm`` dispatcher."""
    from trainer.config import describe_fields

    parser = subparsers.add_parser(
        "train",
        help="pre-train a GPT run that writes checkpoints to the store (WSO: no LR decay)",
        description=__doc__,
        epilog="\n".join([_EPILOG_HEAD, *describe_fields()]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="YAML config file, or a packaged config by name (demo); defaults apply without one"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.set_defaults(func=_dispatch, train_command=None)
    sub = parser.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    branch = sub.add_parser(
        "branch",
        help="fork a run at a checkpoint and train a real LR decay over a window (baseline model)",
        description="Fork RUN at its checkpoint --from, train --window tokens on the same data order with a "
        "WSD decay of the given curve, and publish the result as RUN's model kind=baseline "
        "(what a merge over the same window claims to equal).",
    )
    branch.add_argument("--run", required=True, help="run name in the store")
    branch.add_argument(
        "--from", dest="fork", required=True, help="checkpoint to fork from, in tokens (e.g. 200k)"
    )
    branch.add_argument("--window", required=True, help="decay length in tokens (e.g. 100k)")
    branch.add_argument(
        "--curve",
        default="1-sqrt",
        choices=sorted(MEGATRON_CURVES),
        help="decay curve (default 1-sqrt)",
    )
    branch.add_argument(
        "--min-lr-factor", type=float, default=0.0, help="decay to this fraction of the peak LR"
    )
    branch.add_argument("--name", help="model name (default baseline-<curve>-<from>-<window>)")
    branch.add_argument("--store", help="store URL (default WSM_STORE_URL)")
    branch.add_argument("--threads", type=int, help="torch CPU threads")
    branch.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    branch.set_defaults(func=_dispatch)
