"""``GET /runs/{run}/metrics/series``: a run's loss and LR curve, downsampled for charts.

``GET /runs/{run}`` returns the newest records only (``metrics_limit``), which shows the tail of a
long run. A chart of the whole run needs every part of it at a bounded size: training records are
averaged in equal-count buckets (the loss is noisy; a bucket mean is what a smoothed plot shows),
validation records (one per checkpoint) are all kept.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from anneal import resolve
from api.deps import StoreDep, run_name

router = APIRouter(tags=["runs"])


class TrainPoint(BaseModel):
    """One (averaged) point of the training curve."""

    tokens: float = Field(description="Mean token count of the bucket.")
    step: int | None = Field(default=None, description="Last optimizer step of the bucket, if recorded.")
    loss: float = Field(description="Mean training loss of the bucket.")
    lr: float | None = Field(default=None, description="Learning rate at the bucket's last record.")


class ValPoint(BaseModel):
    """One validation-loss record (the trainer writes one per checkpoint)."""

    tokens: float = Field(description="Training tokens when it was measured.")
    val_loss: float = Field(description="Pre-training validation loss.")


class MetricSeries(BaseModel):
    """A run's training curve at most ``points`` long, plus every validation loss."""

    run: str = Field(description="Run name.")
    records: int = Field(description="Metrics records the run has in total.")
    bucket: int = Field(description="Training records averaged into one point (1 = no downsampling).")
    train: list[TrainPoint] = Field(description="Training loss and LR over tokens, oldest first.")
    val: list[ValPoint] = Field(description="Validation loss over tokens, oldest first.")


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _latest_per_tokens(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Records with a number under ``key``, one per token count (the last), sorted by tokens.

    A run resumed from a checkpoint replays the steps after it: the replay supersedes them.
    """
    latest = {r["tokens"]: r for r in records if _num(r.get("tokens")) and _num(r.get(key))}
    return [latest[t] for t in sorted(latest)]


def downsample(records: list[dict[str, Any]], points: int) -> tuple[int, list[TrainPoint], list[ValPoint]]:
    """Bucket-mean the training records to at most ``points``; keep every validation record."""
    train = _latest_per_tokens(records, "loss")
    val = [
        ValPoint(tokens=r["tokens"], val_loss=r["val_loss"]) for r in _latest_per_tokens(records, "val_loss")
    ]
    bucket = max(1, math.ceil(len(train) / points))
    out = []
    for i in range(0, len(train), bucket):
        chunk = train[i : i + bucket]
        last = chunk[-1]
        out.append(
            TrainPoint(
                tokens=sum(r["tokens"] for r in chunk) / len(chunk),
                step=last.get("step") if isinstance(last.get("step"), int) else None,
                loss=sum(r["loss"] for r in chunk) / len(chunk),
                lr=last["lr"] if _num(last.get("lr")) else None,
            )
        )
    return bucket, out, val


@router.get(
    "/runs/{run}/metrics/series",
    response_model=MetricSeries,
    summary="A run's loss and LR over tokens, downsampled for charts",
)
def metric_series(
    run: str,
    store: StoreDep,
    points: int = Query(default=1000, ge=10, le=20_000, description="At most this many training points."),
) -> MetricSeries:
    name = resolve.choose_run(store, run_name(run))
    records = store.read_metrics(name)
    bucket, train, val = downsample(records, points)
    return MetricSeries(run=name, records=len(records), bucket=bucket, train=train, val=val)
