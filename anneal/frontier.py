"""The annealed frontier: beside the WSO curve, what an anneal at each point of the run scores.

Each series is one variant (curve, window and checkpoint spacing; real decays by curve and
window) followed along the run: one point per window end, the merges (or decays) ending there
pooled. An annealing policy (anneal/policies.py) fills one series by itself while the run trains.
Beside them: the evaluated WSO checkpoints, and the trainer's own validation loss at every
checkpoint (the WSO curve), kept apart because an evaluation may use other samples.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from anneal.compare import Measure, lower_is_better, measure
from anneal.evidence import VAL_METRIC, RunEvidence, curve_label, interval_of, model_id, window_of
from wsm.store import ModelManifest, layout


class FrontierPoint(BaseModel):
    """The metrics at one point of the run."""

    tokens: int = Field(description="Training tokens: the checkpoint, or the end of the window.")
    model_ids: list[str] = Field(description="The models measured here, '<run>:<name>' (empty for WSO).")
    metrics: dict[str, Measure] = Field(description="Every metric measured here.")


class FrontierSeries(BaseModel):
    """One variant along the run."""

    key: str = Field(description="Stable key of the variant, e.g. 'anneal|1-sqrt|1024|512'.")
    kind: Literal["anneal", "decay"] = Field(description="anneal: merges; decay: real-decay branches.")
    curve: str = Field(description="Curve label.")
    window: int = Field(description="Window width in tokens.")
    interval: int | None = Field(description="Spacing of the merged checkpoints (merges only).")
    points: list[FrontierPoint] = Field(description="One point per window end, oldest first.")


class Frontier(BaseModel):
    """The WSO curve and every annealed variant along the run."""

    run: str = Field(description="Run name.")
    metrics: list[str] = Field(description="Metrics present, best known first.")
    lower_is_better: dict[str, bool | None] = Field(
        description="Direction of each metric (None: unknown), from its name."
    )
    eval_config: dict[str, Any] | None = Field(
        description="The evaluation configuration shown (seeds and device removed)."
    )
    wso: list[FrontierPoint] = Field(description="The evaluated WSO checkpoints, oldest first.")
    trainer: list[FrontierPoint] = Field(
        description="The trainer's own validation loss (as pretrain_val_loss) at every checkpoint it saved: "
        "the WSO curve, measured on the trainer's samples (an evaluation may use others)."
    )
    series: list[FrontierSeries] = Field(description="Annealed variants, then real decays.")


def _variant(model: ModelManifest) -> tuple[str, str, int, int | None] | None:
    window = window_of(model)
    if window is None:
        return None
    width = window[1] - window[0]
    if model.kind == "anneal":
        return "anneal", curve_label(model), width, interval_of(model)
    return "decay", curve_label(model), width, None


def _point(evidence: RunEvidence, tokens: int, models: list[ModelManifest]) -> FrontierPoint:
    metrics = {}
    for metric in evidence.metrics:
        value = evidence.model_measure(models, metric)
        if value is not None:
            metrics[metric] = value
    return FrontierPoint(tokens=tokens, model_ids=[model_id(m.run, m.name) for m in models], metrics=metrics)


def frontier(evidence: RunEvidence) -> Frontier:
    """The run's WSO series and one series per variant."""
    wso = []
    for tokens in evidence.checkpoint_tokens:
        metrics = {}
        for metric in evidence.metrics:
            values = evidence.values(layout.checkpoint_dir(evidence.run, tokens), metric)
            value = measure(values)
            if value is not None:
                metrics[metric] = value
        if metrics:
            wso.append(FrontierPoint(tokens=tokens, model_ids=[], metrics=metrics))
    trainer = [
        FrontierPoint(
            tokens=t,
            model_ids=[],
            metrics={VAL_METRIC: Measure(mean=v, sd=None, se=None, n=1, source="trainer")},
        )
        for t, v in sorted(evidence.val_loss.items())
    ]
    groups: dict[tuple[str, str, int, int | None], dict[int, list[ModelManifest]]] = {}
    for m in evidence.models:
        variant, window = _variant(m), window_of(m)
        if variant is not None and window is not None:
            groups.setdefault(variant, {}).setdefault(window[1], []).append(m)
    series = [
        FrontierSeries(
            key="|".join(str(v) for v in variant),
            kind=variant[0],
            curve=variant[1],
            window=variant[2],
            interval=variant[3],
            points=[_point(evidence, end, by_end[end]) for end in sorted(by_end)],
        )
        for variant, by_end in groups.items()
    ]
    series.sort(key=lambda s: (s.kind != "anneal", s.curve, s.window, s.interval or 0))
    return Frontier(
        run=evidence.run,
        metrics=evidence.metrics,
        lower_is_better={m: lower_is_better(m) for m in evidence.metrics},
        eval_config=evidence.eval_config,
        wso=wso,
        trainer=trainer,
        series=series,
    )
