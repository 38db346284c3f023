"""The ``wsm`` command: a thin dispatcher over subcommands that live beside the code they drive.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Modules are
imported lazily by name so that ``wsm weights`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from wsm import __version__
from wsm.errors import UsageError

# subcommand -> module providing register(); kept in one place so `wsm --help` lists them all.
SUBCOMMANDS: dict[str, str] = {
    "weights": "wsm.commands.weights",
    "train": "trainer.cli",
    "up": "wsm.commands.up",
    "merge": "wsm.commands.merge",
    "runs": "wsm.commands.runs",
    "serve": "wsm.commands.serve",
    "worker": "anneal.broker.worker_cli",
    "anneal": "wsm.commands.anneal",
    "compare": "wsm.commands.compare",
    "evaluate": "trainer.eval_cli",
    "export": "trainer.export_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, import just that subcommand's module (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="wsm",
        description="Annealing for never-decaying pre-training: merge checkpoints into decay-equivalent models.",
    )
    parser.add_argument("--version", action="version", version=f"wsm {__version__}")
    parser.add_argument("--log-level", default=None, help="logging level (default: WSM_LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"see `wsm {name} --help`", add_help=False)
            continue
        importlib.import_module(module).register(sub)
    return parser


# megatron-core announces each optional fused kernel it cannot find, once per import: expected
# on CPU and without Transformer Engine, and it buries the command's own output.
_EXPECTED_WARNINGS = (r".*(Transformer Engine|Apex).*not installed.*", r"full scope is deprecated.*")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsm`` console script."""
    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if a in SUBCOMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(args_list)
    from wsm.logs import setup_logging
    from wsm.settings import get_settings
    from wsm.store.errors import IntegrityError

    setup_logging(args.log_level or get_settings().log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"wsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # Input validation errors from the core libraries are user-facing by design.
        logging.getLogger("wsm").debug("validation error", exc_info=True)
        print(f"wsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except IntegrityError as exc:
        # A corrupt store file: its message names the file and byte range; a traceback adds nothing.
        logging.getLogger("wsm").debug("integrity error", exc_info=True)
        print(f"wsm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
