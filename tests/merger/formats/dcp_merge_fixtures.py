"""Megatron runs to merge: several iterations of one dtype, saved by megatron-core itself.

Each run is a Megatron-LM save dir per dtype, ``bf16/`` (iterations :data:`BF16_ITERATIONS`)
and ``fp32/`` (:data:`FP32_ITERATIONS`), each ``iter_<7 digits>/`` holding what
:func:`dcp_fixtures.save_megatron_iteration` saves (model, ``rng_state``, the rerun state
machine, ``common.pt`` with ``args``), model weights seeded by the iteration. TP=1 is saved in
the test process, TP=2 by this file run under ``torchrun --nproc-per-node 2`` (gloo).

Cached like :mod:`dcp_fixtures` (keyed by both files), so the suite builds them once.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import dcp_fixtures

BF16_ITERATIONS = (100, 200, 300)
FP32_ITERATIONS = (100, 200)


def merge_run(save_dir: Path, tp: int) -> None:
    """Both dtype series at tensor parallel ``tp`` (joins or makes the process group)."""
    from trainer.distributed import init_distributed

    init_distributed(tp)
    for name, bf16, iterations in (("bf16", True, BF16_ITERATIONS), ("fp32", False, FP32_ITERATIONS)):
        for iteration in iterations:
            dcp_fixtures.save_megatron_iteration(
                save_dir / name, iteration, tp=tp, bf16=bf16, optimizer=False
            )


def merge_run_torchrun(save_dir: Path, tp: int) -> None:
    """:func:`merge_run` in ``tp`` gloo processes under torchrun (this file as the script)."""
    dcp_fixtures.torchrun_script(__file__, save_dir, tp, timeout=900)


def cached_run(tp: int) -> Path:
    """The run at ``tp``, built once per content of the fixture files."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
    build = (lambda d: merge_run(d, 1)) if tp == 1 else (lambda d: merge_run_torchrun(d, tp))
    return dcp_fixtures.cached(f"megatron-merge-tp{tp}-{key}", build)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    merge_run(args.out, args.tp)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
