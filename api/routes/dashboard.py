"""``GET /runs/{run}/metrics/series``: a run's loss and LR curve, downsampled for charts, and
``GET /runs/{run}/branches``: each real-decay branch's own loss and LR from its fork point.

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
from anneal.evidence import curve_label
from api.convert import model_id
from api.deps import StoreDep, run_name
from api.schemas.research import BranchCurve, BranchList, BranchPoint
from wsm.store import ModelManifest

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


def branch_curve(m: ModelManifest, points: int) -> BranchCurve | None:
    """A baseline's steps as (tokens, lr, loss), placed from its fork point; None without a fork."""
    config, extra = m.config or {}, m.extra or {}
    fork, tps = m.branch_tokens, config.get("tokens_per_step")
    fork_step = config.get("fork_step")
    if fork is None or not isinstance(tps, int) or not isinstance(fork_step, int) or tps <= 0:
        return None
    lrs = [v if _num(v) else None for v in extra.get("lrs") or []]
    losses = dict(zip(extra.get("loss_steps") or [], extra.get("losses") or [], strict=False))
    # The first branch step is fork_step + 1: its LR applied to the step that ends there.
    steps = sorted({fork_step + 1 + i for i in range(len(lrs))} | {s for s in losses if isinstance(s, int)})
    stride = max(1, math.ceil(len(steps) / points))
    kept = [s for i, s in enumerate(steps) if i % stride == 0 or s in losses or i == len(steps) - 1]
    out = []
    for step in kept:
        i = step - fork_step - 1
        loss = losses.get(step)
        out.append(
            BranchPoint(
                tokens=step * tps,
                lr=lrs[i] if 0 <= i < len(lrs) else None,
                loss=loss if _num(loss) else None,
            )
        )
    return BranchCurve(
        model_id=model_id(m.run, m.name),
        curve=curve_label(m),
        fork_tokens=fork,
        end_tokens=m.tokens,
        points=out,
    )


@router.get(
    "/runs/{run}/branches",
    response_model=BranchList,
    summary="Real-decay branches of a run: their own loss and LR, from the fork point",
)
def branches(
    run: str,
    store: StoreDep,
    points: int = Query(default=400, ge=10, le=20_000, description="At most this many steps per branch."),
) -> BranchList:
    name = resolve.choose_run(store, run_name(run))
    curves = (branch_curve(m, points) for m in store.list_models(name, kind="baseline"))
    return BranchList(branches=sorted((c for c in curves if c), key=lambda c: (c.fork_tokens, c.model_id)))
