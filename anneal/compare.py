"""Merge against real decay: the arithmetic of one pairing, pure (no store, no torch).

At one point of a run three things are measured with the same metric: the WSO checkpoint at the
window's end (no decay), the merge over the window, and the real decay over the same window (its
twin, ``wsm train branch``). From them:

* ``gap_pct``: how far the merge is from the real decay, in % of the decay's value;
* ``recovered``: the share of the WSO → decay difference the merge recovers,
  ``(wso - merge) / (wso - decay)`` (1 = all of it, whichever way the metric points);
* ``within_noise``: whether that difference is too small to mean anything. The noise is the
  larger of (a) the spread of the WSO metric over the neighbouring checkpoints, about their linear
  trend, and (b) the standard error of ``wso - decay`` across repeated measurements (seeds,
  evaluations). The difference is within the noise when it is at most ``NOISE_SIGMAS`` times it.
  Without any noise estimate the flag is None: unknown, not "significant".

Every number is optional: a measurement that is missing gives None, never a made-up value, and
values measured differently (an evaluation beside the trainer's own validation loss, which may
use other samples) are shown but not compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

NOISE_SIGMAS = 2.0
"""A WSO → decay difference at most this many noise units is flagged as within the noise."""
NEIGHBOURS = 2
"""Checkpoints on each side of the window's end whose spread estimates the noise."""

Source = Literal["eval", "trainer"]


class Measure(BaseModel):
    """One metric of one model (or one group of repeated models), over its repeated measurements."""

    mean: float = Field(description="Mean over the measurements.")
    sd: float | None = Field(description="Sample standard deviation (None with a single measurement).")
    se: float | None = Field(description="Standard error of the mean, sd / sqrt(n) (None with one).")
    n: int = Field(
        description="Number of measurements: evaluations with different seeds, or repeated models."
    )
    source: Source = Field(
        description="eval: evaluation records; trainer: the trainer's own validation loss (no evaluation yet)."
    )
    reported_se: float | None = Field(
        default=None,
        description="Standard error the evaluation itself reported (lm-eval's <metric>_stderr), averaged "
        "over the measurements; the error bar of a single benchmark run.",
    )


def measure(
    values: Sequence[float], source: Source = "eval", reported_se: Sequence[float] = ()
) -> Measure | None:
    """Mean, spread and count of ``values`` (None when there are none)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return None
    errors = [float(v) for v in reported_se if math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return Measure(
        mean=mean,
        sd=sd,
        se=sd / math.sqrt(n) if sd is not None else None,
        n=n,
        source=source,
        reported_se=sum(errors) / len(errors) if errors else None,
    )


def lower_is_better(metric: str) -> bool | None:
    """Direction of a metric from its name: losses and sharpness go down, accuracies up, else unknown."""
    name = metric.lower()
    if name.endswith("_stderr") or name.endswith("_lr"):
        return None
    if "loss" in name or "perplexity" in name or name.startswith("sharpness"):
        return True
    if "acc" in name or "score" in name or "exact_match" in name or name.startswith("f1"):
        return False
    return None


def neighbours(points: dict[int, float], end: int, k: int = NEIGHBOURS) -> list[tuple[int, float]]:
    """Up to ``k`` checkpoints on each side of ``end`` (and ``end`` itself), as (tokens, value)."""
    tokens = sorted(points)
    before = [t for t in tokens if t < end][-k:]
    after = [t for t in tokens if t > end][:k]
    chosen = [*before, *([end] if end in points else []), *after]
    return [(t, points[t]) for t in chosen]


def trend_spread(points: Sequence[tuple[int, float]]) -> float | None:
    """Standard deviation of the values about their least-squares line (None under 3 points).

    The trend is what training itself does between checkpoints; what is left is the noise of
    the measurement, which a decay's gain must exceed to be seen at all.
    """
    if len(points) < 3:
        return None
    xs = [float(t) for t, _ in points]
    ys = [float(v) for _, v in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    return math.sqrt(sum(r * r for r in residuals) / (n - 2))


class PairStats(BaseModel):
    """One metric of a merge beside its real-decay twin and the WSO checkpoint they both start from."""

    lower_is_better: bool | None = Field(description="Direction of the metric; None when unknown.")
    wso: Measure | None = Field(description="The WSO checkpoint at the window's end (no decay).")
    merge: Measure | None = Field(description="The merged (annealed) model.")
    decay: Measure | None = Field(description="The real decay over the same window and curve.")
    gap_pct: float | None = Field(
        description="100 × (merge - decay) / |decay|: the merge's distance to the decay."
    )
    gap_pct_sd: float | None = Field(
        description="Standard error of gap_pct from the repeated measurements (None without repeats)."
    )
    difference: float | None = Field(description="wso - decay: what the real decay changes.")
    recovered: float | None = Field(
        description="(wso - merge) / (wso - decay): the share of the WSO → decay difference the merge recovers."
    )
    noise: float | None = Field(description="The noise the difference is compared with (metric units).")
    noise_from: Literal["checkpoints", "seeds"] | None = Field(
        description="checkpoints: spread of neighbouring WSO checkpoints; seeds: repeated measurements."
    )
    within_noise: bool | None = Field(
        description=f"True when |wso - decay| <= {NOISE_SIGMAS:g} × noise: the recovered share means little. "
        "None when no noise estimate exists."
    )
    mixed_sources: bool = Field(
        default=False,
        description="Some values come from an evaluation and others from the trainer's own validation loss "
        "(other samples): what would compare them is left out (None).",
    )


def _seed_noise(wso: Measure | None, decay: Measure | None) -> float | None:
    """Standard error of wso - decay from repeated measurements (None if neither was repeated)."""
    parts = [m.se for m in (wso, decay) if m is not None and m.se is not None]
    return math.sqrt(sum(p * p for p in parts)) if parts else None


def pair(
    metric: str,
    wso: Measure | None,
    merge: Measure | None,
    decay: Measure | None,
    *,
    spread: float | None = None,
) -> PairStats:
    """The pairing of one metric; ``spread`` is the neighbouring checkpoints' (:func:`trend_spread`)."""
    gap = gap_sd = difference = recovered = None
    # Only values measured the same way are compared (an evaluation's samples are not the trainer's).
    if merge is not None and decay is not None and merge.source == decay.source and decay.mean != 0:
        gap = 100.0 * (merge.mean - decay.mean) / abs(decay.mean)
        parts = [m.se for m in (merge, decay) if m.se is not None]
        gap_sd = 100.0 * math.sqrt(sum(p * p for p in parts)) / abs(decay.mean) if parts else None
    if wso is not None and decay is not None and wso.source == decay.source:
        difference = wso.mean - decay.mean
        if merge is not None and merge.source == decay.source and difference != 0:
            recovered = (wso.mean - merge.mean) / difference
    estimates = ((spread, "checkpoints"), (_seed_noise(wso, decay), "seeds"))
    candidates = [(v, name) for v, name in estimates if v is not None]
    noise, noise_from = max(candidates) if candidates else (None, None)
    within = None
    if difference is not None and noise is not None:
        within = abs(difference) <= NOISE_SIGMAS * noise
    return PairStats(
        lower_is_better=lower_is_better(metric),
        wso=wso,
        merge=merge,
        decay=decay,
        gap_pct=gap,
        gap_pct_sd=gap_sd,
        difference=difference,
        recovered=recovered,
        noise=noise,
        noise_from=noise_from,
        within_noise=within,
        mixed_sources=len({m.source for m in (wso, merge, decay) if m is not None}) > 1,
    )
