"""``wsm weights``: the checkpoints and merge weights a request would use, before anything runs.

Works on a hypothetical grid (``--interval``, checkpoints every interval up to ``--end``) or on
an explicit list of checkpoint token counts (``--checkpoints 10B,20B,...``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from theory import Selection, format_tokens, parse_tokens, select_checkpoints
from wsm.commands.options import add_curve_arguments, add_window_arguments, curve_from_args


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="print the checkpoints and merge weights c_j, w_j for a curve and window",
        description=(
            "Show which checkpoints a merge would use and their weights (Theorem 3.1 of the WSM paper). "
            "Example: wsm weights --curve 1-sqrt --window 80B --interval 10B"
        ),
    )
    add_curve_arguments(parser)
    add_window_arguments(parser)
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="available checkpoints as comma-separated token counts (default: a grid every --interval)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _available(args: argparse.Namespace) -> list[int]:
    if args.checkpoints:
        return [parse_tokens(v, name="--checkpoints") for v in args.checkpoints.split(",") if v.strip()]
    window = parse_tokens(args.window, name="--window")
    end = parse_tokens(args.end, name="--end") if args.end else window
    if args.interval:
        step = parse_tokens(args.interval, name="--interval")
    elif args.count:
        step = max(window // args.count, 1)
    else:
        raise ValueError("give --interval, --count or --checkpoints so there are checkpoints to choose from")
    return list(range(end % step or step, end + 1, step))


def _table(selection: Selection) -> str:
    lines = [
        f"curve {selection.curve.label()}, window {format_tokens(selection.window)} "
        f"[{format_tokens(selection.window_start)}, {format_tokens(selection.window_end)}]"
        + ("" if selection.exact else f" (requested {format_tokens(selection.requested_window)})"),
        f"{'checkpoint':>12} {'tokens':>16} {'c_j':>10} {'w_j':>10}",
    ]
    for index, tokens in enumerate(selection.tokens):
        w = f"{selection.w[index - 1]:.6f}" if index > 0 else "-"
        lines.append(f"{format_tokens(tokens):>12} {tokens:>16} {selection.c[index]:>10.6f} {w:>10}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    selection = select_checkpoints(
        _available(args),
        curve_from_args(args),
        args.window,
        interval=args.interval,
        count=args.count,
        end=args.end,
    )
    payload: Any = selection.to_dict()
    print(json.dumps(payload, indent=2) if args.json else _table(selection))
    return 0
