"""The typed record of what an annealed model is made of: run, curve, window, sources and weights.

One :class:`AnnealSelection` is built from theory's :class:`~theory.Selection` once, where a window
is resolved against the store (:func:`merger.store_io.select`), and then travels as is: in the
job spec, in the merge plan's provenance, into the published model's manifest. Nothing downstream
re-reads it from loose dicts, and :meth:`AnnealSelection.model_name` gives the one name of a merge,
whichever road (``wsm merge --run`` or ``POST /anneal``) asked for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from merger.formats.output import DEFAULT_OUT_FORMAT
from theory import CurveSpec, Selection, format_tokens_exact
from wsm.store import SourceCheckpoint, Window


class CurveRecord(BaseModel):
    """A decay curve as data: :class:`theory.CurveSpec`'s fields, validated by rebuilding it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Canonical curve name from theory's registry."""
    alpha: float | None = None
    """EMA weight on the newest checkpoint (``ema`` only)."""
    floor: float = 0.0
    """Decay to this fraction of the peak instead of zero."""
    coefficients: tuple[float, ...] | None = None
    """``custom`` only: the decay coefficients w_1..w_k."""

    @classmethod
    def of(cls, spec: CurveSpec) -> CurveRecord:
        return cls(name=spec.name, alpha=spec.alpha, floor=spec.floor, coefficients=spec.coefficients)

    def spec(self) -> CurveSpec:
        return CurveSpec(name=self.name, alpha=self.alpha, floor=self.floor, coefficients=self.coefficients)


class AnnealSelection(BaseModel):
    """The checkpoints of a run merged into one annealed model, with their weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str
    """Run whose checkpoints are merged."""
    curve: CurveRecord
    """Decay curve the weights come from (Theorem 3.1)."""
    curve_label: str
    """Short human label of the curve, e.g. ``1-sqrt`` or ``ema(α=0.2)``."""
    requested_window: int = Field(ge=0)
    """The window W asked for, in tokens."""
    window_start: int = Field(ge=0)
    """S: where the effective window starts, in tokens."""
    window_end: int = Field(ge=0)
    """E: the newest merged checkpoint, in tokens."""
    sources: tuple[SourceCheckpoint, ...]
    """Merged checkpoints, oldest first: tokens, weights digest, merge weight c and decay weight w."""

    @classmethod
    def of(cls, run: str, selection: Selection, sha256_of: Mapping[int, str]) -> AnnealSelection:
        """From theory's selection, with each checkpoint's weights digest (from its manifest)."""
        sources = tuple(
            SourceCheckpoint(
                tokens=t,
                sha256=sha256_of[t],
                c=float(selection.c[i]),
                w=float(selection.w[i - 1]) if i > 0 else 0.0,  # the oldest ends no segment
            )
            for i, t in enumerate(selection.tokens)
        )
        return cls(
            run=run,
            curve=CurveRecord.of(selection.curve),
            curve_label=selection.curve.label(),
            requested_window=selection.requested_window,
            window_start=selection.window_start,
            window_end=selection.window_end,
            sources=sources,
        )

    @property
    def window(self) -> int:
        """The window actually covered, E − S."""
        return self.window_end - self.window_start

    @property
    def exact(self) -> bool:
        return self.window == self.requested_window

    @property
    def tokens(self) -> list[int]:
        return [s.tokens for s in self.sources]

    @property
    def weights(self) -> list[float]:
        return [s.c for s in self.sources]

    @property
    def window_range(self) -> Window:
        return Window(start_tokens=self.window_start, end_tokens=self.window_end)

    def key(self) -> str:
        """Digest of everything the merged weights depend on: run, curve, sources and weights."""
        obj = {
            "run": self.run,
            "curve": self.curve.model_dump(mode="json"),
            "sources": [(s.tokens, s.sha256, s.c) for s in self.sources],
        }
        return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def model_name(self, out_format: str = DEFAULT_OUT_FORMAT) -> str:
        """The one name of this merge: every curve parameter, exact token counts, a digest of the sources.

        ``anneal-1-sqrt-w491.52k-at-983.04k-n4-1a2b3c4d``: the CLI and the service give the same
        inputs and weights the same name, so nothing is stored twice. Written in another format
        than safetensors, the name says so (``…-1a2b3c4d-torch_dist``): the same weights in two
        layouts are two models.
        """
        suffix = "" if out_format == DEFAULT_OUT_FORMAT else f"-{out_format}"
        return (
            f"anneal-{self.curve.spec().slug()}-w{format_tokens_exact(self.window)}"
            f"-at-{format_tokens_exact(self.window_end)}-n{len(self.sources)}-{self.key()[:8]}{suffix}"
        )
