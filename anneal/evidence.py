"""What a comparison reads of one run, loaded once: models, evaluations and the trainer's losses.

Evaluations are only compared within one configuration: two evaluations of the same model with
different SFT recipes measure different things. Seeds (``seed``, ``*_seed``) and the device do
not make a different measurement, they make a repeated one: evaluations that differ only there
form one group, and the run's most used group is the reference (``eval_config``). Evaluations of
other groups are counted in ``excluded``, not mixed in.

Where no evaluation exists, the held-out pre-training loss falls back to the trainer's own
validation loss (the same sequences: trainer/eval_data.py): at WSO checkpoints from the run's
metrics, for a real-decay branch from its manifest. Such a number says ``source="trainer"``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from anneal.compare import Measure, measure
from theory import TheoryError, canonical_curve_name
from wsm.store import EvalManifest, ModelManifest, Store, layout, parse_checkpoint_name

VAL_METRIC = "pretrain_val_loss"
"""The metric the trainer also measures (its ``val_loss``) on the same held-out sequences."""
KNOWN_ORDER = ("pretrain_val_loss", "sft_val_loss", "task_accuracy", "sft_val_loss_before")
"""Metrics listed first, in this order; every other key of the evaluations follows alphabetically."""
_NOT_A_MEASUREMENT = frozenset({"seed", "device"})


def model_id(run: str, name: str) -> str:
    """``<run>:<name>``, the API's id of a model (api/convert.py gives the same)."""
    return f"{run}:{name}"


def _strip(config: Any) -> Any:
    """``config`` without what only repeats a measurement: seeds and the device."""
    if isinstance(config, dict):
        return {
            k: _strip(v)
            for k, v in config.items()
            if k not in _NOT_A_MEASUREMENT and not str(k).endswith("_seed")
        }
    if isinstance(config, list):
        return [_strip(v) for v in config]
    return config


def config_key(config: dict[str, Any]) -> str:
    """Evaluations with the same key measure the same thing (maybe with other seeds)."""
    return json.dumps(_strip(config), sort_keys=True, separators=(",", ":"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def checkpoint_tokens(model_dir: str) -> int | None:
    """Tokens of a checkpoint dir (``runs/r/checkpoints/000…``), None for anything else."""
    parts = layout.split_artifact_dir(model_dir)
    if parts is None or parts[1] != layout.CHECKPOINTS:
        return None
    try:
        return parse_checkpoint_name(parts[2])
    except ValueError:
        return None


def window_of(model: ModelManifest) -> tuple[int, int] | None:
    """(start, end) tokens of a model's window: the merged window, or the decay branch's."""
    if model.window is not None:
        return model.window.start_tokens, model.window.end_tokens
    if model.kind == "baseline" and model.branch_tokens is not None:
        return model.branch_tokens, model.tokens
    return None


def curve_key(model: ModelManifest) -> tuple[str, float] | None:
    """(canonical curve, floor) a real decay can also run; None for ema, custom or unknown curves."""
    curve = model.curve or {}
    try:
        name = canonical_curve_name(str(curve.get("name")))
    except TheoryError:
        return None
    if curve.get("alpha") is not None or curve.get("coefficients") or name in ("ema", "custom"):
        return None
    floor = _number(curve.get("floor")) or _number(curve.get("min_lr_factor")) or 0.0
    return name, round(floor, 9)


def twin_key(model: ModelManifest) -> tuple[str, float, int, int] | None:
    """Same run, window and curve: a merge and its real decay share this key."""
    curve, window = curve_key(model), window_of(model)
    return (*curve, *window) if curve is not None and window is not None else None


def curve_label(model: ModelManifest) -> str:
    """The curve as people read it: the merger's label, or the decay's name (with its floor)."""
    curve = model.curve or {}
    if curve.get("label"):
        return str(curve["label"])
    name = str(curve.get("name", "?"))
    floor = _number(curve.get("floor")) or _number(curve.get("min_lr_factor"))
    return f"{name} floor={floor:g}" if floor else name


def interval_of(model: ModelManifest) -> int | None:
    """The checkpoint spacing a merge used: the median gap between its sources."""
    tokens = sorted(s.tokens for s in model.sources)
    gaps = sorted(b - a for a, b in itertools.pairwise(tokens))
    return gaps[len(gaps) // 2] if gaps else None


@dataclass
class RunEvidence:
    """One run's models, evaluations and validation losses, with lookups by model and metric."""

    run: str
    models: list[ModelManifest]
    evals: list[EvalManifest]
    val_loss: dict[int, float] = field(default_factory=dict)
    """The trainer's validation loss by tokens (one per checkpoint it saved)."""
    _evaluated: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        run: str,
        models: list[ModelManifest],
        evals: list[EvalManifest],
        metrics: Iterable[dict[str, Any]],
    ) -> RunEvidence:
        """From already loaded manifests and metrics records (a resumed run's replay wins)."""
        val: dict[int, float] = {}
        for record in metrics:
            tokens, value = record.get("tokens"), _number(record.get("val_loss"))
            if isinstance(tokens, int) and value is not None:
                val[tokens] = value
        return cls(run=run, models=models, evals=evals, val_loss=val)

    @classmethod
    def load(cls, store: Store, run: str) -> RunEvidence:
        """One listing and one batched read of the run, plus its metrics."""
        contents = store.read_run(run)
        return cls.of(run, contents.models, contents.evals, store.read_metrics(run))

    # -- evaluations ---------------------------------------------------------------------------
    @cached_property
    def reference(self) -> str | None:
        """The configuration group most evaluations share (ties: the one evaluated last)."""
        if not self.evals:
            return None
        counts = Counter(config_key(e.config) for e in self.evals)
        newest = {config_key(e.config): e.created_at for e in self.evals}
        return max(counts, key=lambda k: (counts[k], newest[k]))

    @property
    def eval_config(self) -> dict[str, Any] | None:
        """The reference configuration, without seeds and device."""
        if self.reference is None:
            return None
        parsed: dict[str, Any] = json.loads(self.reference)
        return parsed

    @cached_property
    def _by_dir(self) -> dict[str, list[EvalManifest]]:
        out: dict[str, list[EvalManifest]] = {}
        for e in self.evals:
            if config_key(e.config) == self.reference:
                out.setdefault(e.model_id, []).append(e)
        return out

    @property
    def excluded(self) -> int:
        """Evaluations left out because they measured with another configuration."""
        return len(self.evals) - sum(len(v) for v in self._by_dir.values())

    @cached_property
    def metrics(self) -> list[str]:
        """Every metric of the reference evaluations (and the pre-training loss), best known first."""
        names = {k for group in self._by_dir.values() for e in group for k in e.metrics}
        if self.val_loss:
            names.add(VAL_METRIC)
        known = [m for m in KNOWN_ORDER if m in names]
        return known + sorted(names - set(known))

    def values(self, model_dir: str, metric: str) -> list[float]:
        found = (_number(e.metrics.get(metric)) for e in self._by_dir.get(model_dir, []))
        return [v for v in found if v is not None]

    # -- measures ------------------------------------------------------------------------------
    def model_measure(self, models: list[ModelManifest], metric: str) -> Measure | None:
        """The metric over every evaluation of ``models`` (repeats of one variant); trainer fallback."""
        values = [v for m in models for v in self.values(m.dir, metric)]
        if values:
            return measure(
                values, reported_se=[e for m in models for e in self.values(m.dir, f"{metric}_stderr")]
            )
        if metric == VAL_METRIC:
            trained = [_number(m.extra.get("val_loss")) for m in models if m.kind == "baseline"]
            return measure([v for v in trained if v is not None], "trainer")
        return None

    def checkpoint_measure(self, tokens: int, metric: str) -> Measure | None:
        """The WSO checkpoint at ``tokens``: its evaluations, else the trainer's validation loss."""
        where = layout.checkpoint_dir(self.run, tokens)
        values = self.values(where, metric)
        if values:
            return measure(values, reported_se=self.values(where, f"{metric}_stderr"))
        if metric == VAL_METRIC and tokens in self.val_loss:
            return measure([self.val_loss[tokens]], "trainer")
        return None

    @cached_property
    def checkpoint_tokens(self) -> list[int]:
        """Every token count with a WSO measurement: validated by the trainer or evaluated."""
        evaluated = {checkpoint_tokens(d) for d in self._by_dir}
        return sorted({t for t in evaluated if t is not None} | set(self.val_loss))

    def checkpoint_values(self, metric: str, source: str) -> dict[int, float]:
        """The metric at every WSO checkpoint measured by ``source``: evaluations (their mean) or
        the trainer (its validation loss). Never mixed: the two may use different samples."""
        if source == "trainer":
            return dict(self.val_loss) if metric == VAL_METRIC else {}
        if metric not in self._evaluated:  # asked once per pair and metric: computed once
            out = {}
            for t in self.checkpoint_tokens:
                values = self.values(layout.checkpoint_dir(self.run, t), metric)
                if values:
                    out[t] = sum(values) / len(values)
            self._evaluated[metric] = out
        return dict(self._evaluated[metric])

    @property
    def anneals(self) -> list[ModelManifest]:
        return [m for m in self.models if m.kind == "anneal"]

    @property
    def decays(self) -> list[ModelManifest]:
        return [m for m in self.models if m.kind == "baseline"]
