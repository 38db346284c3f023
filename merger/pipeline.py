"""The anneal pipeline as plain Python: resolve, merge + publish, evaluate. Knows nothing of Celery.

Stages (merger/tasks.py drives them, the API calls :func:`resolve`):

1. :func:`resolve` turns a request into a :class:`~merger.jobs.JobSpec` (theory's selection over
   the run's published checkpoints, plus each checkpoint's sha256); :func:`check_sources`
   re-checks on the worker that those exact checkpoints are still there.
2. :func:`merge` (one worker) or :func:`run_part` + :func:`publish_parts` (a split merge) write
   the annealed model through the store's atomic publish: nothing is visible until complete.
3./4. :func:`evaluate` runs the SFT evaluation of the annealed model and of the WSO checkpoint at
   the window's end (``evaluate_model`` returns a cached result for the same config).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from merger.engine import ProgressFn, finalize_index, finalize_sharded, merge_part
from merger.errors import MergeError
from merger.inputs import INDEX_NAME
from merger.jobs import JobSpec
from merger.manifest import build_manifest
from merger.plan import MergePlan, plan_merge
from merger.safetensors_io import CODE_TO_NAME
from merger.stats import MergeStats
from merger.store_io import checkpoint_ref, publish_merge
from theory import (
    ALIASES,
    CURVE_NAMES,
    CurveSpec,
    TheoryError,
    canonical_curve_name,
    format_tokens,
    select_checkpoints,
)
from wsm.store import (
    ArtifactNotFoundError,
    CheckpointManifest,
    EvalManifest,
    ModelManifest,
    RunManifest,
    Store,
    layout,
)
from wsm.store.manifests import SourceCheckpoint, Window

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


class RequestError(ValueError):
    """A request that cannot be served; ``code`` names the problem, ``choices`` the valid values."""

    code = "invalid_request"

    def __init__(self, detail: str, *, code: str | None = None, choices: Sequence[str] | None = None) -> None:
        super().__init__(detail)
        self.code = code or type(self).code
        self.choices = list(choices) if choices is not None else None


class UnknownRunError(RequestError, LookupError):
    code = "unknown_run"


class SourcesChangedError(MergeError):
    """A checkpoint of the job was deleted or replaced after the job was requested."""


# -- stage 1: resolve ----------------------------------------------------------------------------
class Listing(Protocol):
    """What resolving needs from the store: a :class:`Store`, or the API's short-lived cache of it."""

    def list_runs(self) -> list[RunManifest]: ...

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]: ...


def choose_run(store: Listing, run: str | None) -> str:
    """``run`` if it exists; unset: the only run, else the most recently created one."""
    runs = store.list_runs()
    names = [r.run for r in runs]
    if run is None:
        if not runs:
            raise UnknownRunError("the store has no runs yet", choices=[])
        return max(runs, key=lambda r: r.created_at).run
    if run not in names:
        raise UnknownRunError(
            f"unknown run {run!r}; runs in the store: {', '.join(names) or '(none)'}", choices=names
        )
    return run


def curve_spec(curve: str | Sequence[float], *, alpha: float | None, floor: float) -> CurveSpec:
    """A validated curve from a name or explicit decay coefficients (a custom curve)."""
    if isinstance(curve, str):
        try:
            name = canonical_curve_name(curve)
        except TheoryError as e:
            raise RequestError(str(e), code="unknown_curve", choices=[*CURVE_NAMES, *ALIASES]) from e
        if name == "custom":
            raise RequestError(
                'the custom curve is given as a list of coefficients: "curve": [w_1, ..., w_k]',
                code="invalid_curve",
            )
        return _spec(name=name, alpha=alpha, floor=floor)
    return _spec(name="custom", alpha=alpha, floor=floor, coefficients=tuple(float(v) for v in curve))


def _spec(**kwargs: Any) -> CurveSpec:
    try:
        return CurveSpec(**kwargs)
    except TheoryError as e:
        raise RequestError(str(e), code="invalid_curve") from e


def resolve(
    store: Listing,
    *,
    curve: CurveSpec,
    window: int | str,
    run: str | None = None,
    interval: int | str | None = None,
    count: int | None = None,
    end: int | str | None = None,
    evaluate: bool = True,
    eval_config: dict[str, Any] | None = None,
) -> JobSpec:
    """Stage 1: choose the window's checkpoints and weights; the result names the job."""
    run = choose_run(store, run)
    manifests = {m.tokens: m for m in store.list_checkpoints(run)}
    if not manifests:
        raise RequestError(f"run {run!r} has no published checkpoints yet", code="no_checkpoints")
    try:
        sel = select_checkpoints(manifests, curve, window, interval=interval, count=count, end=end)
    except TheoryError as e:
        raise RequestError(str(e), code="invalid_window") from e
    selection = sel.to_dict()
    for entry in selection["checkpoints"]:
        entry["sha256"] = weights_sha256(manifests[int(entry["tokens"])])
    curve_dict = curve.to_dict()
    merge_key = JobSpec.merge_key(run, curve_dict, selection)
    name = (
        f"anneal-{curve.name}-{format_tokens(sel.window)}-at-{format_tokens(sel.window_end)}-{merge_key[:8]}"
    )
    return JobSpec(
        run=run,
        curve=curve_dict,
        request={"window": window, "interval": interval, "count": count, "end": end},
        selection=selection,
        evaluate=evaluate,
        eval_config=eval_config if evaluate else None,
        model_name=name,
    )


def weights_sha256(manifest: CheckpointManifest) -> str:
    """The checkpoint's weights digest exactly as merger/store_io.py records it in model sources."""
    names = {f.name for f in manifest.files}
    if layout.MODEL_FILE in names:
        return manifest.file(layout.MODEL_FILE).sha256
    if layout.MODEL_INDEX_FILE in names:
        weight_files = sorted(n for n in names if n.endswith(".safetensors"))
        lines = "".join(f"{n} {manifest.file(n).sha256}\n" for n in weight_files)
        return hashlib.sha256(lines.encode()).hexdigest()
    raise MergeError(f"{manifest.dir}: checkpoint has no weights ({layout.MODEL_FILE} or index)")


def check_sources(store: Store, spec: JobSpec) -> dict[int, CheckpointManifest]:
    """The job's checkpoints, each still published with the sha256 it was requested with."""
    out = {}
    for entry in spec.selection["checkpoints"]:
        tokens = int(entry["tokens"])
        try:
            manifest = store.get_checkpoint(spec.run, tokens)
        except ArtifactNotFoundError as e:
            raise SourcesChangedError(
                f"checkpoint {format_tokens(tokens)} of run {spec.run!r} is gone: {e}"
            ) from e
        if weights_sha256(manifest) != entry["sha256"]:
            raise SourcesChangedError(
                f"checkpoint {format_tokens(tokens)} of run {spec.run!r} was replaced since the request"
            )
        out[tokens] = manifest
    return out


# -- stage 2: merge and publish ------------------------------------------------------------------
def build_plan(store: Store, spec: JobSpec, manifests: dict[int, CheckpointManifest]) -> MergePlan:
    """Plan the merge of the job's checkpoints with the job's coefficients (headers only)."""
    refs = [checkpoint_ref(store, manifests[t]) for t in spec.tokens]
    weights = [float(c["c"]) for c in spec.selection["checkpoints"]]
    curve = curve_from_dict(spec.curve)
    provenance = {
        "run": spec.run,
        "store": store.url,
        **spec.selection,
        "curve_spec": {**spec.curve, "label": curve.label()},
    }
    return plan_merge(refs, weights, provenance=provenance)


def curve_from_dict(d: dict[str, Any]) -> CurveSpec:
    """Inverse of ``CurveSpec.to_dict()`` (JSON turns the coefficients tuple into a list)."""
    coefficients = d.get("coefficients")
    return CurveSpec(
        name=str(d["name"]),
        alpha=d.get("alpha"),
        floor=float(d.get("floor") or 0.0),
        coefficients=tuple(float(v) for v in coefficients) if coefficients is not None else None,
    )


def published_model(store: Store, spec: JobSpec) -> ModelManifest | None:
    """The job's model if an earlier attempt (or an identical job) already published it."""
    try:
        model = store.get_model(spec.run, spec.model_name)
    except ArtifactNotFoundError:
        return None
    wanted = [(int(c["tokens"]), c["sha256"]) for c in spec.selection["checkpoints"]]
    if [(s.tokens, s.sha256) for s in model.sources] != wanted:
        raise MergeError(f"{model.dir} exists but was merged from other checkpoints; delete it to re-run")
    return model


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
    """Stage 2 on one worker: merge and publish atomically as ``runs/<run>/models/<model_name>``."""
    manifest, stats = publish_merge(store, plan, name=spec.model_name, on_progress=on_progress)
    log.info("job model %s: %.2f GB in %.1fs", manifest.dir, stats.gb_read, stats.seconds)
    return manifest


def split(plan: MergePlan, parts: int) -> list[Any]:
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


def run_part(scratch: str, index: int, parts: int, on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Stage 2, one part of a split merge: write this part's shards into ``scratch``."""
    plan = read_split_plan(scratch)
    chosen = plan.split(parts)
    if index >= len(chosen):
        raise MergeError(f"part {index} of a merge split into {len(chosen)} parts")
    stats = merge_part(chosen[index], scratch, on_progress=on_progress)
    return stats.to_dict()


def _stats_from_dict(d: dict[str, Any]) -> MergeStats:
    fields = set(MergeStats.__dataclass_fields__)
    return MergeStats(**{k: v for k, v in d.items() if k in fields})


def publish_parts(
    store: Store, spec: JobSpec, scratch: str, part_stats: Sequence[dict[str, Any]]
) -> ModelManifest:
    """Stage 2, final step of a split merge: check every shard, then publish shards + index atomically."""
    plan = read_split_plan(scratch)
    stats = finalize_sharded(plan, scratch, [_stats_from_dict(s) for s in part_stats], fsync=False)
    p = plan.provenance
    out_dtypes = sorted({t.out_dtype for t in plan.tensors if t.is_float})
    dtype = CODE_TO_NAME.get(out_dtypes[0], out_dtypes[0]) if len(out_dtypes) == 1 else "mixed"
    sources = [
        SourceCheckpoint(tokens=int(c["tokens"]), sha256=c["sha256"], c=float(c["c"]), w=float(c["w"] or 0.0))
        for c in p["checkpoints"]
    ]
    with store.publish_model(
        spec.run,
        spec.model_name,
        kind="anneal",
        tokens=int(p["window_end"]),
        dtype=dtype,
        curve=dict(p["curve_spec"]),
        window=Window(start_tokens=int(p["window_start"]), end_tokens=int(p["window_end"])),
        sources=sources,
    ) as pub:
        for shard in plan.shards:
            pub.put_file(shard.filename, os.path.join(scratch, shard.filename))
        index = finalize_index(plan)
        if index is not None:
            pub.write_bytes(INDEX_NAME, json.dumps(index, indent=2).encode())
        pub.update(
            timings={k: float(v) for k, v in stats.timings.items()},
            bytes_read=stats.bytes_read,
            config={
                "accumulate": plan.accumulate,
                "weights": list(plan.weights),
                "parts": len(part_stats),
                "merge": build_manifest(plan, stats),
            },
        )
    assert pub.manifest is not None
    return pub.manifest


def remove_scratch(scratch: str) -> None:
    shutil.rmtree(scratch, ignore_errors=True)


# -- stages 3 and 4: evaluate --------------------------------------------------------------------
def evaluation_targets(spec: JobSpec) -> dict[str, str]:
    """``{"anneal": model dir, "baseline": WSO checkpoint dir at the window's end}``."""
    return {
        "anneal": layout.model_dir(spec.run, spec.model_name),
        "baseline": layout.checkpoint_dir(spec.run, spec.window_end),
    }


def evaluate(
    store: Store, spec: JobSpec, target: str, progress: Callable[..., Any] | None = None
) -> EvalManifest:
    """Run (or reuse) the SFT evaluation of one store-relative model dir with the job's config."""
    from trainer.evaluate import evaluate_model
    from wsm.eval_config import EvalConfig

    config = _eval_config(EvalConfig, spec.eval_config)
    return evaluate_model(store, spec.run, target, config, progress=progress)


def _eval_config(cls: Any, fields: dict[str, Any] | None) -> Any:
    if fields is None:
        return None
    if hasattr(cls, "model_validate"):
        return cls.model_validate(fields)
    return cls(**fields)


def eval_summary(manifest: EvalManifest) -> dict[str, Any]:
    """What a job record keeps of an evaluation (the API's EvalOut)."""
    return {
        "name": manifest.name,
        "run": manifest.run,
        "model_dir": manifest.model_id,
        "metrics": dict(manifest.metrics),
        "config": dict(manifest.config),
        "seeds": list(manifest.seeds),
        "duration_s": manifest.duration_s,
        "created_at": manifest.created_at.isoformat(),
    }
