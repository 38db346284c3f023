"""Every merge of a run beside its real-decay twin: the comparison ``GET /runs/{run}/compare`` and
``wsm compare`` show.

A twin is a ``kind="baseline"`` model (``wsm train branch``) with the same run, window (start and
end tokens) and curve (name and floor) as the merge. Several twins of one variant (seeds) are
pooled, as are several evaluations of one model: their spread gives the error bars. The
arithmetic is anneal/compare.py's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from anneal.compare import NOISE_SIGMAS, PairStats, neighbours, pair, trend_spread
from anneal.evidence import RunEvidence, curve_label, interval_of, model_id, twin_key
from wsm.store import ModelManifest, layout


class PairRow(BaseModel):
    """One merge, its twin(s) and the WSO checkpoint at the window's end, per metric."""

    model_id: str = Field(description="The merged model, '<run>:<name>'.")
    name: str = Field(description="The merged model's name.")
    curve: str = Field(description="Curve label, e.g. '1-sqrt' (the twin decays along the same curve).")
    window_start: int = Field(description="Start of the window in tokens (the twin's fork point).")
    window_end: int = Field(description="End of the window in tokens (the WSO checkpoint compared).")
    window: int = Field(description="Window width in tokens.")
    checkpoints: int = Field(description="Checkpoints the merge averaged.")
    interval: int | None = Field(description="Spacing of the merged checkpoints in tokens (median gap).")
    decay_models: list[str] = Field(description="The real-decay twin(s), '<run>:<name>'; several = seeds.")
    wso_dir: str = Field(description="Store directory of the WSO checkpoint at the window's end.")
    metrics: dict[str, PairStats] = Field(description="The pairing per metric (every metric measured).")


class Comparison(BaseModel):
    """Merges against real decay for one run."""

    run: str = Field(description="Run name.")
    metrics: list[str] = Field(description="Metrics present, best known first (pretrain_val_loss, ...).")
    eval_config: dict[str, Any] | None = Field(
        description="The evaluation configuration compared (seeds and device removed); evaluations "
        "made with another configuration are left out."
    )
    evals_excluded: int = Field(description="Evaluations left out: made with another configuration.")
    noise_sigmas: float = Field(description="within_noise means |wso - decay| <= this × noise.")
    unpaired: int = Field(description="Merges of the run with no real-decay twin yet.")
    rows: list[PairRow] = Field(description="One row per merge that has a twin, by window end then curve.")


def _decays_by_key(evidence: RunEvidence) -> dict[tuple[str, float, int, int], list[ModelManifest]]:
    out: dict[tuple[str, float, int, int], list[ModelManifest]] = {}
    for m in evidence.decays:
        key = twin_key(m)
        if key is not None:
            out.setdefault(key, []).append(m)
    return out


def _spread(evidence: RunEvidence, metric: str, end: int) -> float | None:
    """The neighbouring WSO checkpoints' spread: from their evaluations where at least three of
    them are evaluated, else from the trainer's validation losses."""
    for source in ("eval", "trainer"):
        around = neighbours(evidence.checkpoint_values(metric, source), end)
        if len(around) >= 3:
            return trend_spread(around)
    return None


def pair_row(evidence: RunEvidence, merge: ModelManifest, twins: list[ModelManifest]) -> PairRow:
    """The pairing of one merge with its twins, over every metric either side measured."""
    key = twin_key(merge)
    assert key is not None and merge.window is not None
    start, end = key[2], key[3]
    stats: dict[str, PairStats] = {}
    for metric in evidence.metrics:
        merged = evidence.model_measure([merge], metric)
        decayed = evidence.model_measure(twins, metric)
        if merged is None and decayed is None:
            continue
        wso = evidence.checkpoint_measure(end, metric)
        stats[metric] = pair(metric, wso, merged, decayed, spread=_spread(evidence, metric, end))
    return PairRow(
        model_id=model_id(merge.run, merge.name),
        name=merge.name,
        curve=curve_label(merge),
        window_start=start,
        window_end=end,
        window=end - start,
        checkpoints=len(merge.sources),
        interval=interval_of(merge),
        decay_models=[model_id(t.run, t.name) for t in sorted(twins, key=lambda t: t.name)],
        wso_dir=layout.checkpoint_dir(merge.run, end),
        metrics=stats,
    )


def comparison(evidence: RunEvidence) -> Comparison:
    """Every merge of the run that has a real-decay twin, paired metric by metric."""
    decays = _decays_by_key(evidence)
    rows, unpaired = [], 0
    for merge in evidence.anneals:
        key = twin_key(merge)
        if key is None or key not in decays:
            unpaired += 1
            continue
        rows.append(pair_row(evidence, merge, decays[key]))
    rows.sort(key=lambda r: (r.window_end, r.curve, r.window, r.interval or 0, r.name))
    return Comparison(
        run=evidence.run,
        metrics=evidence.metrics,
        eval_config=evidence.eval_config,
        evals_excluded=evidence.excluded,
        noise_sigmas=NOISE_SIGMAS,
        unpaired=unpaired,
        rows=rows,
    )
