"""Request and response models of the research endpoints: policies, grids and branch curves.

The comparison (``GET /runs/{run}/compare``) and the frontier (``GET /runs/{run}/frontier``) are
served as the anneal use case builds them (anneal/pairing.py, anneal/frontier.py), so the API,
``wsm compare`` and the dashboard read one shape. Like api/schemas.py, fields are only added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import MAX_COEFFICIENTS, TokenCount

PointState = Literal["waiting", "queued", "running", "done", "failed", "skipped"]
CurveValue = str | list[float]
CURVE_HELP = "Decay curve: a name (see GET /curves) or explicit non-increasing decay coefficients w_1..w_k."


class PolicyRequest(BaseModel):
    """``POST /policies``: anneal (and evaluate) each time training passes another ``every`` tokens."""

    model_config = ConfigDict(extra="forbid")

    curve: CurveValue = Field(
        default="1-sqrt", description=CURVE_HELP, examples=["1-sqrt"], max_length=MAX_COEFFICIENTS
    )
    window: TokenCount = Field(
        description="Window of every anneal, in tokens ('80B', 200000).", examples=["80B"]
    )
    every: TokenCount = Field(description="A point every this many training tokens.", examples=["100B"])
    run: str | None = Field(
        default=None, description="Run name; default: the only run, or the one with the newest checkpoint."
    )
    interval: TokenCount | None = Field(
        default=None,
        description="Spacing of the merged checkpoints; default: every checkpoint in the window.",
    )
    count: int | None = Field(
        default=None, ge=2, le=100_000, description="Number of merged checkpoints; excludes interval."
    )
    floor: float = Field(default=0.0, ge=0.0, lt=1.0, description="Decay to this fraction of the peak LR.")
    alpha: float | None = Field(default=None, gt=0.0, le=1.0, description="EMA weight (curve 'ema' only).")
    evaluate: bool = Field(default=True, description="Evaluate each annealed model and the WSO checkpoint.")


class PolicyPointOut(BaseModel):
    """One point of a policy: the anneal at ``k × every`` tokens."""

    tokens: int = Field(description="The point, k × every tokens.")
    window_end: int = Field(
        description="Where its anneal ends: the newest checkpoint at or before the point."
    )
    state: PointState = Field(
        description="waiting: due, the next worker sweep creates its job; queued/running/done/failed: its "
        "job's state; skipped: the window does not fit (see error)."
    )
    job_id: str | None = Field(description="Its anneal job (deterministic, also before it exists).")
    stage: str | None = Field(description="The job's stage.")
    progress: float | None = Field(description="The job's progress within its stage, 0-100.")
    model_id: str | None = Field(description="The annealed model, once published.")
    error: str | None = Field(description="Why the point has no job, or why its job failed.")


class PolicyOut(BaseModel):
    """An annealing policy and its points so far."""

    policy_id: str = Field(description="Id of the policy (a digest of what it asks for).")
    run: str = Field(description="Run it follows.")
    curve: dict[str, Any] = Field(description="Curve parameters: name, alpha, floor, coefficients.")
    curve_label: str = Field(description="Short label of the curve.")
    window: int = Field(description="Window of every anneal, in tokens.")
    every: int = Field(description="Tokens between points.")
    interval: int | None = Field(description="Spacing of the merged checkpoints, if set.")
    count: int | None = Field(description="Number of merged checkpoints, if set.")
    evaluate: bool = Field(description="Whether each point is evaluated.")
    created_at: datetime = Field(description="When the policy was created (UTC).")
    next_point: int = Field(description="The next point, in tokens, that training has not reached yet.")
    points: list[PolicyPointOut] = Field(description="Every point the run has passed, oldest first.")
    created: bool | None = Field(default=None, description="POST only: whether this request created it.")


class PolicyList(BaseModel):
    """Policies, oldest first."""

    policies: list[PolicyOut] = Field(description="Policies.")


def _every_checkpoint() -> list[TokenCount | None]:
    return [None]


class GridRequest(BaseModel):
    """``POST /grids``: one anneal per curve × window × interval, all ending at the same point."""

    model_config = ConfigDict(extra="forbid")

    curves: list[CurveValue] = Field(
        description=f"Curves (rows). {CURVE_HELP}",
        min_length=1,
        max_length=16,
        examples=[["1-sqrt", "linear"]],
    )
    windows: list[TokenCount] = Field(
        description="Window widths (merge duration), in tokens.",
        min_length=1,
        max_length=32,
        examples=[["80B"]],
    )
    intervals: list[TokenCount | None] = Field(
        default_factory=lambda: _every_checkpoint(),
        description="Checkpoint spacings (merge granularity); null: every checkpoint in the window.",
        min_length=1,
        max_length=32,
    )
    run: str | None = Field(default=None, description="Run name; default: the only or newest run.")
    end: TokenCount | None = Field(
        default=None, description="Where every window ends; default: the newest checkpoint."
    )
    floor: float = Field(default=0.0, ge=0.0, lt=1.0, description="Decay to this fraction of the peak LR.")
    alpha: float | None = Field(default=None, gt=0.0, le=1.0, description="EMA weight (curve 'ema' only).")
    evaluate: bool = Field(default=True, description="Evaluate every annealed model and the WSO checkpoint.")


class GridCellOut(BaseModel):
    """One cell of a grid: its job and, once evaluated, its metrics."""

    curve: dict[str, Any] = Field(description="Curve parameters.")
    curve_label: str = Field(description="Short label of the curve.")
    window: int = Field(description="Window width asked for, in tokens.")
    interval: int | None = Field(description="Checkpoint spacing asked for (null: every checkpoint).")
    state: PointState = Field(description="The job's state, 'skipped' if the run cannot serve the cell.")
    job_id: str | None = Field(description="The cell's anneal job.")
    stage: str | None = Field(description="The job's stage.")
    progress: float | None = Field(description="The job's progress within its stage, 0-100.")
    model_id: str | None = Field(description="The annealed model, once published.")
    checkpoints: int | None = Field(description="Checkpoints merged.")
    error: str | None = Field(description="Why the cell has no job, or why its job failed.")
    metrics: dict[str, float] = Field(description="Evaluation of the annealed model (empty until done).")
    wso_metrics: dict[str, float] = Field(description="Evaluation of the WSO checkpoint at the window's end.")


class GridOut(BaseModel):
    """A grid of anneals and its results as one table."""

    grid_id: str = Field(description="Id of the grid (a digest of the request, its end resolved).")
    run: str = Field(description="Run name.")
    end: int = Field(description="Where every window ends, in tokens.")
    curves: list[str] = Field(description="Curve labels, in request order.")
    windows: list[int] = Field(description="Windows, in request order.")
    intervals: list[int | None] = Field(description="Intervals, in request order.")
    evaluate: bool = Field(description="Whether cells are evaluated.")
    created_at: datetime = Field(description="When the grid was created (UTC).")
    cells: list[GridCellOut] = Field(description="Cells: curves × windows × intervals, in that order.")
    created: bool | None = Field(default=None, description="POST only: whether this request created it.")


class GridList(BaseModel):
    """Grids of a run, newest first."""

    grids: list[GridOut] = Field(description="Grids.")


class BranchPoint(BaseModel):
    """One step of a real-decay branch."""

    tokens: int = Field(
        description="Training tokens after the step (the fork point plus the branch's steps)."
    )
    lr: float | None = Field(description="Learning rate of the step.")
    loss: float | None = Field(description="Training loss, at the steps the trainer logged.")


class BranchCurve(BaseModel):
    """A real-decay branch (``wsm train branch``) drawn from its fork point."""

    model_id: str = Field(description="The baseline model, '<run>:<name>'.")
    curve: str = Field(description="Curve label of the decay.")
    fork_tokens: int = Field(description="The checkpoint it forked from, in tokens.")
    end_tokens: int = Field(description="Where the decay ended, in tokens.")
    points: list[BranchPoint] = Field(description="Its steps (downsampled), oldest first.")


class BranchList(BaseModel):
    """Real-decay branches of a run."""

    branches: list[BranchCurve] = Field(description="Branches, by fork point.")
