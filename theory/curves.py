"""Decay curves f on [0, 1] with f(0) = 1 and f(1) = 0, and their discretisation into w_j.

A curve is named by a :class:`CurveSpec`. Most curves are functions of the position x of an
update inside the window; ``ema`` is defined per checkpoint instead (it is a recursive average),
and ``custom`` carries its decay coefficients w_1..w_k directly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from theory.errors import TheoryError
from theory.theorem import FloatArray, validate_decay

CurveFunction = Callable[[FloatArray], FloatArray]


def _linear(x: FloatArray) -> FloatArray:
    return 1.0 - x


def _cosine(x: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.cos(math.pi * x))


def _one_minus_sqrt(x: FloatArray) -> FloatArray:
    return 1.0 - np.sqrt(x)


def _exponential(x: FloatArray) -> FloatArray:
    # Megatron-core's WSD "exponential" style: 2·0.5^x − 1 goes from 1 to 0 over the window.
    return 2.0 * np.power(0.5, x) - 1.0


def _constant(x: FloatArray) -> FloatArray:
    return np.ones_like(x)


CURVE_FUNCTIONS: dict[str, CurveFunction] = {
    "linear": _linear,
    "cosine": _cosine,
    "1-sqrt": _one_minus_sqrt,
    "exponential": _exponential,
    "constant": _constant,
}
ALIASES: dict[str, str] = {"minus_sqrt": "1-sqrt", "mean": "linear", "wso": "constant", "none": "constant"}
CURVE_NAMES: tuple[str, ...] = (*CURVE_FUNCTIONS, "ema", "custom")
CURVE_DESCRIPTIONS: dict[str, str] = {
    "linear": "1 − x: merging is the uniform mean of the checkpoints",
    "cosine": "½(1 + cos πx)",
    "1-sqrt": "1 − √x: the WSM paper's best; megatron's minus_sqrt",
    "exponential": "2·0.5^x − 1: megatron's WSD exponential style",
    "constant": "1: the newest checkpoint alone, the WSO model",
    "ema": "recursive EMA with weight alpha on the newest checkpoint; defined per checkpoint",
    "custom": "your own decay coefficients w_1..w_k, non-increasing in [0, 1]",
}
"""One line per curve, for listings (``GET /curves``, ``wsm weights --help``)."""


@dataclass(frozen=True)
class CurveInfo:
    """What a client needs to offer a curve: its name, aliases, parameters and shape."""

    name: str
    aliases: tuple[str, ...]
    description: str
    parameters: tuple[str, ...]
    """Parameters it accepts besides ``floor``: ``alpha`` (ema), ``coefficients`` (custom)."""
    samples: tuple[tuple[float, float], ...] | None
    """(x, f(x)) on [0, 1] for position-based curves; None for ema and custom (per checkpoint)."""


def curve_catalog(samples: int = 51) -> list[CurveInfo]:
    """Every curve of the registry with its target shape sampled at ``samples`` points."""
    x = np.linspace(0.0, 1.0, samples)
    out = []
    for name in CURVE_NAMES:
        shape = None
        if name in CURVE_FUNCTIONS:
            y = CURVE_FUNCTIONS[name](x)
            shape = tuple((float(a), float(b)) for a, b in zip(x, y, strict=True))
        params = {"ema": ("alpha",), "custom": ("coefficients",)}.get(name, ())
        aliases = tuple(sorted(a for a, target in ALIASES.items() if target == name))
        out.append(CurveInfo(name, aliases, CURVE_DESCRIPTIONS[name], params, shape))
    return out


def canonical_curve_name(name: str) -> str:
    """The canonical name of a curve, resolving aliases; unknown names list the valid choices."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in CURVE_NAMES:
        choices = ", ".join([*CURVE_NAMES, *ALIASES])
        raise TheoryError(f"unknown curve {name!r}; choose one of: {choices}")
    return key


@dataclass(frozen=True)
class CurveSpec:
    """A decay curve with its parameters, validated at construction."""

    name: str = "1-sqrt"
    """Curve name: linear (=mean), cosine, 1-sqrt (=minus_sqrt), exponential, ema, constant, custom."""

    alpha: float | None = None
    """EMA weight on the newest checkpoint, in (0, 1]; required for ``ema`` and only allowed there."""

    floor: float = 0.0
    """Decay to ``floor`` × peak instead of zero: w = floor + (1 − floor)·f. In [0, 1)."""

    coefficients: tuple[float, ...] | None = field(default=None)
    """For ``custom``: the decay coefficients w_1..w_k themselves, non-increasing in [0, 1]."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_curve_name(self.name))
        if not (isinstance(self.floor, (int, float)) and 0.0 <= self.floor < 1.0):
            raise TheoryError(f"floor = {self.floor!r} must be in [0, 1)")
        if self.name == "ema":
            if self.alpha is None or not (0.0 < self.alpha <= 1.0) or math.isnan(self.alpha):
                raise TheoryError(f"ema needs alpha in (0, 1], got alpha = {self.alpha!r}")
        elif self.alpha is not None:
            raise TheoryError(f"alpha applies only to the ema curve, not to {self.name!r}")
        if self.name == "custom":
            if not self.coefficients:
                raise TheoryError("the custom curve needs its decay coefficients w_1..w_k (at least one)")
            checked = validate_decay(list(self.coefficients))
            object.__setattr__(self, "coefficients", tuple(float(v) for v in checked))
        elif self.coefficients is not None:
            raise TheoryError(f"coefficients apply only to the custom curve, not to {self.name!r}")

    @property
    def fixed_checkpoint_count(self) -> int | None:
        """How many checkpoints the curve itself dictates (custom: k + 1), else None."""
        return len(self.coefficients) + 1 if self.coefficients is not None else None

    def label(self) -> str:
        """Short human label, e.g. ``1-sqrt``, ``ema(α=0.2)``, ``cosine floor=0.1``."""
        text = f"ema(α={self.alpha:g})" if self.name == "ema" else self.name
        return f"{text} floor={self.floor:g}" if self.floor else text

    def slug(self) -> str:
        """A name-safe id carrying every parameter: ``1-sqrt``, ``ema-a0.2``, ``cosine-floor0.1``,
        ``custom-<8 hex of the coefficients>``. Different curves never share a slug."""
        text = self.name
        if self.alpha is not None:
            text += f"-a{self.alpha!r}"
        if self.coefficients is not None:
            digest = hashlib.sha256(repr(self.coefficients).encode()).hexdigest()[:8]
            text += f"-{digest}"
        if self.floor:
            text += f"-floor{float(self.floor)!r}"
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly parameters; ``CurveSpec(**spec.to_dict())`` rebuilds the same curve."""
        return {
            "name": self.name,
            "alpha": self.alpha,
            "floor": self.floor,
            "coefficients": list(self.coefficients) if self.coefficients is not None else None,
        }

    def function(self) -> CurveFunction:
        """f(x) on [0, 1] for the position-based curves (not ema or custom)."""
        if self.name not in CURVE_FUNCTIONS:
            raise TheoryError(f"curve {self.name!r} is defined per checkpoint, not as a function of x")
        return CURVE_FUNCTIONS[self.name]

    def decay_at(self, x: Sequence[float] | FloatArray) -> FloatArray:
        """The continuous target w(x) = floor + (1 − floor)·f(x) on [0, 1] (position-based curves only)."""
        positions = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        return np.asarray(self.floor + (1.0 - self.floor) * self.function()(positions), dtype=np.float64)

    def _per_checkpoint_raw(self, checkpoints: int) -> FloatArray:
        k = checkpoints - 1
        if self.name == "custom":
            assert self.coefficients is not None
            return np.asarray(self.coefficients, dtype=np.float64)
        assert self.alpha is not None
        # Recursive EMA over k+1 checkpoints: c_0 = (1−α)^k, c_j = α(1−α)^(k−j) ⇔ w_i = 1 − (1−α)^(k−i+1).
        i = np.arange(1, k + 1, dtype=np.float64)
        return 1.0 - np.power(1.0 - self.alpha, k - i + 1)

    def decay_coefficients(self, offsets: Sequence[float] | FloatArray) -> FloatArray:
        """w_1..w_k for updates whose segments start at window fractions ``offsets`` (one per w).

        ``offsets[j-1] = (t_{j-1} − S) / W``: the start of the segment between checkpoints j−1 and j.
        """
        x = np.asarray(offsets, dtype=np.float64)
        if x.ndim != 1 or np.any(~np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
            raise TheoryError(f"window offsets must be finite fractions in [0, 1], got {x.tolist()}")
        if self.name in CURVE_FUNCTIONS:
            raw = self.function()(x)
        else:
            if self.name == "custom" and self.coefficients is not None and len(self.coefficients) != x.size:
                raise TheoryError(
                    f"the custom curve has {len(self.coefficients)} coefficients, so it needs "
                    f"{len(self.coefficients) + 1} checkpoints, but {x.size + 1} were selected"
                )
            raw = self._per_checkpoint_raw(x.size + 1)
        return validate_decay(self.floor + (1.0 - self.floor) * raw)
