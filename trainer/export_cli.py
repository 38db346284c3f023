"""``wsm export MODEL --hf OUT/``: a stored checkpoint or model as a Hugging Face Llama directory.

OUT gets ``config.json``, ``model.safetensors``, ``generation_config.json`` and the run's tokenizer
(``tokenizer.json``, ``tokenizer_config.json`` with the SFT chat template, whose role markers are
special tokens), loadable by ``transformers.AutoModelForCausalLM`` and hence by lm-evaluation-harness
and vLLM. Files are 0644 and directories 0755, like any other model download.

MODEL may also be a Hugging Face Llama directory (a mergekit output, say): it is written again with
its run's tokenizer, chat template and special tokens, in the dtype asked for (``--run`` names the
run, unless a ``wsm export`` recorded it in the directory's config).
"""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from trainer.eval_cli import parse_model_spec
    from trainer.export import export_hf
    from wsm.store import open_store

    store = open_store(args.store)
    run, model_dir = parse_model_spec(store, args.model, args.run)
    out = export_hf(store, run, model_dir, args.hf, dtype=args.dtype)
    print(f"{model_dir} -> {out}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``wsm export``."""
    from trainer.eval_cli import MODEL_HELP, RUN_HELP

    parser = subparsers.add_parser(
        "export",
        help="write a stored checkpoint or model as a Hugging Face Llama directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument(
        "--hf", required=True, metavar="OUT", help="output directory (must be empty or absent)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default float32)",
    )
    parser.add_argument("--run", help=RUN_HELP)
    parser.add_argument("--store", help="store URL (default WSM_STORE_URL)")
    parser.set_defaults(func=_run)
