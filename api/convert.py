"""Store manifests and job records to API response models (api/schemas.py).

Text and trainer-defined fields of records (a job's error, a run's data paths, an evaluation's
config) may name server paths; they are redacted here (api/redact.py) on their way out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from anneal import resolve
from anneal.jobs import DEFAULT_OUT_FORMAT, AnnealSelection, JobRecord
from api import redact
from api.schemas import (
    AnnealAccepted,
    CheckpointOut,
    CheckpointWeight,
    EvalOut,
    ExternalSourceOut,
    JobEvaluations,
    JobOut,
    LRPoint,
    ModelOut,
    RunDetail,
    RunSummary,
    SelectionOut,
    SourceOut,
    Suggestion,
)
from theory import CurveSpec, lr_steps, target_points
from wsm.store import CheckpointManifest, EvalManifest, ModelManifest, RunManifest, layout

MODEL_ID_SEP = ":"


def model_id(run: str, name: str) -> str:
    """``<run>:<name>``; ``:`` is not allowed in store names, so the id splits unambiguously."""
    return f"{run}{MODEL_ID_SEP}{name}"


def split_model_id(value: str) -> tuple[str, str]:
    """Inverse of :func:`model_id`; ValueError names the expected format."""
    run, sep, name = value.partition(MODEL_ID_SEP)
    if not sep or not run or not name:
        raise ValueError(
            f"model id {value!r} must look like '<run>:<name>', e.g. 'r1:anneal-1-sqrt-w80B-at-100B-n5-1a2b3c4d'"
        )
    return run, name


def job_out(
    record: JobRecord, status_url: str, *, created: bool | None = None, warnings: list[str] | None = None
) -> JobOut:
    """The API view of a job record; with ``created``, the answer to ``POST /anneal``."""
    spec = record.spec
    redactor = redact.current()
    evals = {
        k: EvalOut.model_validate(redactor.json(v.model_dump(mode="json"))) for k, v in record.evals.items()
    }
    extra = {} if created is None else {"created": created, "warnings": warnings or []}
    return (JobOut if created is None else AnnealAccepted)(
        job_id=record.job_id,
        run=spec.run,
        state=record.state,
        stage=record.stage,
        phases=record.phases(),
        progress=round(record.progress, 2),
        message=redactor.text(record.message),
        error=redactor.text(record.error) if record.error is not None else None,
        evaluate=spec.evaluate,
        selection=selection_out(spec.selection),
        model_name=spec.model_name,
        model_id=model_id(spec.run, spec.model_name) if record.model_published else None,
        evaluations=JobEvaluations(**evals),
        attempts=record.attempts,
        created_at=record.created_at,
        updated_at=record.updated_at,
        heartbeat_at=record.heartbeat_at,
        finished_at=record.finished_at,
        status_url=status_url,
        **extra,
    )


def selection_out(sel: AnnealSelection) -> SelectionOut:
    return SelectionOut(
        curve=sel.curve.model_dump(mode="json"),
        curve_label=sel.curve_label,
        window=sel.window,
        requested_window=sel.requested_window,
        window_start=sel.window_start,
        window_end=sel.window_end,
        exact=sel.exact,
        checkpoints=[
            CheckpointWeight(tokens=s.tokens, sha256=s.sha256, c=s.c, w=s.w if i > 0 else None)
            for i, s in enumerate(sel.sources)
        ],
    )


def run_summary(run: RunManifest, checkpoints: list[CheckpointManifest]) -> RunSummary:
    return RunSummary(
        run=run.run,
        description=redact.current().text(run.description),
        created_at=run.created_at,
        checkpoints=len(checkpoints),
        latest_tokens=checkpoints[-1].tokens if checkpoints else None,
        source=source_out(run),
    )


def source_out(run: RunManifest) -> ExternalSourceOut | None:
    """Where an external run lives (a server path redacted like any other); None for wsm's own runs."""
    if run.source is None:
        return None
    return ExternalSourceOut(
        uri=redact.current().text(run.source.uri),
        layout=run.source.layout,
        tokens_per_step=run.source.tokens_per_step,
        tokenizer=bool(run.tokenizer.get("file")),
    )


def run_detail(
    run: RunManifest, checkpoints: list[CheckpointManifest], metrics: list[dict[str, Any]], truncated: bool
) -> RunDetail:
    """A run with its (trainer-defined, redacted) configuration and its newest metrics."""
    redactor = redact.current()
    return RunDetail(
        **run_summary(run, checkpoints).model_dump(),
        model=redactor.json(run.model),
        tokenizer=redactor.json(run.tokenizer),
        data=redactor.json(run.data),
        schedule=redactor.json(run.schedule),
        extra=redactor.json(run.extra),
        latest_step=checkpoints[-1].step if checkpoints else None,
        metrics=metrics,
        metrics_truncated=truncated,
        suggestion=_suggestion(run, checkpoints),
    )


def _suggestion(run: RunManifest, checkpoints: list[CheckpointManifest]) -> Suggestion | None:
    found = resolve.suggestion(run, [c.tokens for c in checkpoints])
    return Suggestion(**dataclasses.asdict(found)) if found is not None else None


def checkpoint_out(m: CheckpointManifest) -> CheckpointOut:
    names = {f.name for f in m.files}
    sha256 = m.file(layout.MODEL_FILE).sha256 if layout.MODEL_FILE in names else None
    if m.location is not None:  # an external run's checkpoint: its data and identity live outside the store
        sha256 = m.location.identity
    return CheckpointOut(
        run=m.run,
        tokens=m.tokens,
        step=m.step,
        created_at=m.created_at,
        bytes=m.total_bytes + (m.location.total_bytes if m.location is not None else 0),
        sha256=sha256,
        extra=redact.current().json(m.extra),
    )


def _curve_spec(curve: dict[str, Any] | None) -> CurveSpec | None:
    if not curve or "name" not in curve:
        return None
    coefficients = curve.get("coefficients")
    return CurveSpec(
        name=str(curve["name"]),
        alpha=curve.get("alpha"),
        floor=float(curve.get("floor") or 0.0),
        coefficients=tuple(coefficients) if coefficients is not None else None,
    )


def _curves(m: ModelManifest) -> tuple[list[LRPoint] | None, list[LRPoint] | None]:
    """The merge's effective-LR steps and the target curve, computed by theory (never by clients)."""
    if m.kind != "anneal" or m.window is None or not m.sources:
        return None, None
    src = sorted(m.sources, key=lambda s: s.tokens)
    steps = lr_steps(m.window.start_tokens, [s.tokens for s in src], [s.w for s in src[1:]])
    spec = _curve_spec(m.curve)
    target = target_points(spec, m.window.start_tokens, m.window.end_tokens) if spec else None
    return (
        [LRPoint(x=x, y=y) for x, y in steps.points()],
        [LRPoint(x=x, y=y) for x, y in target] if target is not None else None,
    )


def model_out(m: ModelManifest, weights_url: str) -> ModelOut:
    steps, target = _curves(m)
    return ModelOut(
        id=model_id(m.run, m.name),
        run=m.run,
        name=m.name,
        kind=m.kind,
        tokens=m.tokens,
        dtype=m.dtype,
        curve=redact.current().json(m.curve),
        window_start=m.window.start_tokens if m.window else None,
        window_end=m.window.end_tokens if m.window else None,
        sources=[SourceOut(tokens=s.tokens, sha256=s.sha256, c=s.c, w=s.w) for s in m.sources],
        lr_steps=steps,
        target_curve=target,
        format=str(m.config.get("format") or DEFAULT_OUT_FORMAT),
        files=[f.name for f in m.files],
        bytes=m.total_bytes,
        timings=m.timings,
        created_at=m.created_at,
        weights_url=weights_url,
    )


def eval_out(m: EvalManifest) -> EvalOut:
    redactor = redact.current()
    return EvalOut(
        name=m.name,
        run=m.run,
        model_dir=redactor.text(m.model_id),
        metrics=m.metrics,
        config=redactor.json(m.config),
        seeds=m.seeds,
        duration_s=m.duration_s,
        created_at=m.created_at,
    )
