"""Command-line flags shared by every command that names a curve and a window (weights, merge, anneal)."""

from __future__ import annotations

import argparse

from theory import CURVE_NAMES, CurveSpec


def parse_coefficients(text: str) -> tuple[float, ...]:
    """``--coefficients 0.8,0.4,0.1`` as numbers, with an error naming the flag."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--coefficients: {text!r} is not a comma-separated list of numbers") from None


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The curve flags shared by every command that derives merge weights."""
    parser.add_argument(
        "--curve", default="1-sqrt", help=f"decay curve: {', '.join(CURVE_NAMES)} (default 1-sqrt)"
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="EMA weight on the newest checkpoint (ema only)"
    )
    parser.add_argument(
        "--floor", type=float, default=0.0, help="decay to this fraction of the peak LR (default 0)"
    )
    parser.add_argument(
        "--coefficients",
        default=None,
        help="custom curve: comma-separated non-increasing decay coefficients w_1..w_k",
    )


def curve_from_args(args: argparse.Namespace) -> CurveSpec:
    """Build the validated curve named by :func:`add_curve_arguments` flags."""
    coefficients = parse_coefficients(args.coefficients) if args.coefficients else None
    name = "custom" if coefficients is not None and args.curve in (None, "1-sqrt") else args.curve
    return CurveSpec(name=name, alpha=args.alpha, floor=args.floor, coefficients=coefficients)


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """The window flags shared by every command that selects checkpoints."""
    parser.add_argument("--window", required=True, help="window width in tokens, e.g. 80B, 200k")
    parser.add_argument("--interval", default=None, help="checkpoint spacing to merge on, e.g. 10B")
    parser.add_argument(
        "--count", type=int, default=None, help="number of checkpoints (interval = window / count)"
    )
    parser.add_argument("--end", default=None, help="window end in tokens (default: the newest checkpoint)")
