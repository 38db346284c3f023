"""Synthetic runs for API and pipeline tests: checkpoints of random safetensors, published through the store.

No trainer needed for merge-only tests: each checkpoint holds a few float tensors (and one
integer tensor that is identical everywhere, as non-float tensors must be).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
from safetensors.numpy import save_file

from wsm.store import Store

M = 1_000_000


def write_checkpoint(
    store: Store, run: str, tokens: int, *, elements: int = 4096, tensors: int = 4, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed + tokens // 1000)
    arrays = {
        f"layer{i}.weight": rng.standard_normal(elements, dtype=np.float32).reshape(-1, 64)
        for i in range(tensors)
    }
    arrays["position_ids"] = np.arange(16, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_file(arrays, path)
        with store.publish_checkpoint(
            run, tokens, step=tokens // 1000, extra={"lr": 3e-4, "loss": 3.0}
        ) as pub:
            pub.put_file("model.safetensors", path)


def make_run(
    store: Store,
    run: str = "r1",
    tokens: Sequence[int] = tuple(i * 10 * M for i in range(1, 11)),
    **kwargs: int,
) -> list[int]:
    """A run with checkpoints every 10M tokens up to 100M (by default) and a few metrics."""
    store.create_run(run, model={"hidden": 64}, schedule={"style": "constant"}, description=f"test run {run}")
    for t in tokens:
        write_checkpoint(store, run, t, **kwargs)
    store.append_metrics(run, [{"tokens": t, "loss": 3.0 - t / 1e9, "lr": 3e-4} for t in tokens])
    return list(tokens)
