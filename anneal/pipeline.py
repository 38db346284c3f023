"""Stages 2-4 of a job as plain Python: merge and publish, then evaluate. Knows nothing of Celery.

anneal/runner.py drives these around locks, heartbeats and records; stage 1 is anneal/resolve.py.

2. :func:`build_plan` re-checks that the job's checkpoints are still there with the digests they
   were requested with, then :func:`merge` (one worker) or :func:`run_part` + :func:`publish_parts`
   (a split merge) write the annealed model through the store's atomic publish
   (merger/store_io.py, the same code ``wsm merge --run`` uses).
3./4. :func:`evaluate` runs the job's evaluation of the annealed model and of the WSO checkpoint at
   the window's end through the :class:`~anneal.ports.Evaluator` port (cached per config).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from anneal.jobs import EvalTarget, JobSpec
from anneal.ports import Evaluator
from merger import store_io
from merger.engine import ProgressFn, merge_part
from merger.errors import MergeError
from merger.plan import MergePart, MergePlan
from merger.stats import MergeStats
from wsm.store import EvalManifest, ModelManifest, Store, layout
from wsm.store.writable import check_room

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


class PartResult(BaseModel):
    """What one part of a split merge reports to the final step (through the broker, as JSON)."""

    part: int
    """Index of the part."""
    skipped: bool = False
    """The job moved on to another attempt before this part ran."""
    error: str | None = None
    """Why the part failed, if it did."""
    stats: dict[str, Any] | None = None
    """The part's :class:`~merger.stats.MergeStats` (``to_dict``), if it ran."""


# -- stage 2: merge and publish ------------------------------------------------------------------
def build_plan(store: Store, spec: JobSpec) -> MergePlan:
    """Plan the merge of the job's checkpoints (headers only); refuses changed sources."""
    return store_io.plan_selection(
        store, spec.selection, allow_nonfinite=spec.allow_nonfinite, out_format=spec.out_format
    )


def published_model(store: Store, spec: JobSpec) -> ModelManifest | None:
    """The job's model if an earlier attempt (or the same merge asked another way) already published it."""
    return store_io.published_model(store, spec.selection, spec.model_name)


def progress_adapter(report: Callable[[float], None], throttle_s: float = 0.0) -> ProgressFn:
    """The engine's ``(done, total)`` bytes callback as a percent; ``throttle_s`` slows merges (tests)."""

    def on_progress(done: int, total: int) -> None:
        report(100.0 * done / total if total else 100.0)
        if throttle_s > 0:
            time.sleep(throttle_s)

    return on_progress


def merge(
    store: Store, spec: JobSpec, plan: MergePlan, on_progress: ProgressFn | None = None
) -> ModelManifest:
    """Stage 2 on one worker: merge and publish atomically as ``runs/<run>/models/<model_name>``.

    Refuses at once (:class:`StoreUnwritable`, naming the sizes) when the model would not fit with
    the store's reserve to spare, rather than filling the disk and failing at the end.
    """
    check_room(store, plan.output_bytes)
    manifest, stats = store_io.publish_merge(store, plan, name=spec.model_name, on_progress=on_progress)
    log.info("job model %s: %.2f GB in %.1fs", manifest.dir, stats.gb_read, stats.seconds)
    return manifest


def split(plan: MergePlan, parts: int) -> list[MergePart]:
    """Byte-balanced parts of ``plan``; they all belong to ``parts[0].plan`` (maybe resharded)."""
    return plan.split(parts)


def write_split_plan(plan: MergePlan, scratch: str) -> None:
    """Ship the (resharded) plan to the part workers through the shared scratch directory."""
    os.makedirs(scratch, exist_ok=True)
    tmp = os.path.join(scratch, f".{PLAN_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan.to_dict(), f)
    os.replace(tmp, os.path.join(scratch, PLAN_FILE))


def read_split_plan(scratch: str) -> MergePlan:
    with open(os.path.join(scratch, PLAN_FILE), encoding="utf-8") as f:
        return MergePlan.from_dict(json.load(f))


def run_part(scratch: str, index: int, parts: int, on_progress: ProgressFn | None = None) -> PartResult:
    """Stage 2, one part of a split merge: write this part's shards into ``scratch``."""
    plan = read_split_plan(scratch)
    chosen = plan.split(parts)
    if index >= len(chosen):
        raise MergeError(f"part {index} of a merge split into {len(chosen)} parts")
    stats = merge_part(chosen[index], scratch, on_progress=on_progress)
    return PartResult(part=index, stats=stats.to_dict())


def publish_parts(store: Store, spec: JobSpec, scratch: str, results: list[PartResult]) -> ModelManifest:
    """Stage 2, final step of a split merge: check every shard, then publish shards + index atomically."""
    failed = [r for r in results if r.error is not None]
    if failed:
        raise MergeError(f"part {failed[0].part} failed: {failed[0].error}")
    if any(r.skipped or r.stats is None for r in results):
        raise MergeError("a part was skipped; the job moved on to another attempt")
    stats = [MergeStats.from_dict(r.stats) for r in results if r.stats is not None]
    plan = read_split_plan(scratch)
    check_room(store, plan.output_bytes)
    return store_io.publish_parts(store, plan, scratch, stats, name=spec.model_name)


def remove_scratch(scratch: str) -> None:
    shutil.rmtree(scratch, ignore_errors=True)


# -- stages 3 and 4: evaluate --------------------------------------------------------------------
def evaluation_targets(spec: JobSpec) -> dict[EvalTarget, str]:
    """``{"anneal": model dir, "baseline": WSO checkpoint dir at the window's end}``."""
    return {
        "anneal": layout.model_dir(spec.run, spec.model_name),
        "baseline": layout.checkpoint_dir(spec.run, spec.window_end),
    }


def evaluation_message(spec: JobSpec, target: str) -> str:
    """What the evaluation of ``target`` measures, naming only the phases its config runs."""
    cfg = spec.eval_config
    if cfg is None:
        return f"evaluating {target}"
    phases = [
        name
        for name, runs in (
            ("pre-training loss", cfg.pretrain_loss),
            ("sharpness", cfg.sharpness.enabled and bool(cfg.sharpness_on)),
            ("SFT and task accuracy", cfg.run_sft),
        )
        if runs
    ]
    return f"evaluating {target}: {', '.join(phases) or 'nothing enabled'}"


def evaluate(
    evaluator: Evaluator,
    store: Store,
    spec: JobSpec,
    target: str,
    progress: Callable[..., Any] | None = None,
) -> EvalManifest:
    """Run (or reuse) the evaluation of one store-relative model dir with the job's config."""
    return evaluator(store, spec.run, target, spec.eval_config, progress=progress)
