"""Stage 1 of a job: turn a request into a :class:`~anneal.jobs.JobSpec`, in the use case's terms.

The window is resolved by the same function ``wsm merge --run`` uses
(:func:`merger.store_io.select`), so both give the same selection and the same model name.
Every failure is a :class:`~anneal.errors.RequestError` subclass naming the problem.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Protocol

from pydantic import ValidationError

from anneal import external
from anneal.errors import (
    InvalidCurveError,
    InvalidWindowError,
    NoCheckpointsError,
    UnknownCurveError,
    UnknownRunError,
)
from anneal.jobs import AnnealSelection, JobSpec, WindowRequest
from merger import store_io
from merger.formats.output import DEFAULT_OUT_FORMAT
from theory import (
    ALIASES,
    CURVE_NAMES,
    CurveSpec,
    TheoryError,
    WindowSuggestion,
    canonical_curve_name,
    format_tokens,
    parse_tokens,
    suggest_window,
)
from wsm.eval_config import EvalConfig
from wsm.store import CheckpointManifest, RunManifest


class Listing(Protocol):
    """What resolving needs from the store: a :class:`Store`, or the API's short-lived cache of it."""

    def list_runs(self) -> list[RunManifest]: ...

    def list_checkpoints(self, run: str) -> list[CheckpointManifest]: ...


def choose_run(store: Listing, run: str | None) -> str:
    """``run`` if it exists; unset: the most recently created run."""
    runs = store.list_runs()
    names = [r.run for r in runs]
    if run is None:
        if not runs:
            raise UnknownRunError("the store has no runs yet", choices=[])
        return max(runs, key=lambda r: r.created_at).run
    if run not in names:
        raise UnknownRunError(
            f"unknown run {run!r}; runs in the store: {', '.join(names) or '(none)'}", choices=names
        )
    return run


def curve_spec(curve: str | Sequence[float], *, alpha: float | None, floor: float) -> CurveSpec:
    """A validated curve from a name or explicit decay coefficients (a custom curve)."""
    if isinstance(curve, str):
        try:
            name = canonical_curve_name(curve)
        except TheoryError as e:
            raise UnknownCurveError(str(e), choices=[*CURVE_NAMES, *ALIASES]) from e
        if name == "custom":
            raise InvalidCurveError(
                'the custom curve is given as a list of coefficients: "curve": [w_1, ..., w_k]'
            )
        return _spec(name=name, alpha=alpha, floor=floor)
    return _spec(name="custom", alpha=alpha, floor=floor, coefficients=tuple(float(v) for v in curve))


def _spec(**kwargs: object) -> CurveSpec:
    try:
        return CurveSpec(**kwargs)  # type: ignore[arg-type]
    except TheoryError as e:
        raise InvalidCurveError(str(e)) from e


def window_request(
    window: int | str, interval: int | str | None, count: int | None, end: int | str | None
) -> WindowRequest:
    """Sizes such as ``"80B"`` become integers here, once."""
    try:
        return WindowRequest(
            window=parse_tokens(window, name="window"),
            interval=parse_tokens(interval, name="interval") if interval is not None else None,
            count=count,
            end=parse_tokens(end, name="end", allow_zero=True) if end is not None else None,
        )
    except TheoryError as e:
        raise InvalidWindowError(str(e)) from e
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidWindowError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from e


def resolve(
    store: Listing,
    *,
    curve: CurveSpec,
    request: WindowRequest,
    run: str | None = None,
    evaluate: bool = True,
    eval_config: EvalConfig | None = None,
    allow_nonfinite: bool = False,
    out_format: str = DEFAULT_OUT_FORMAT,
) -> JobSpec:
    """Choose the window's checkpoints and weights; the result names the job and its model."""
    run = choose_run(store, run)
    if evaluate:  # an external run without tokenizer or Megatron arguments: refused now, not after the merge
        external.check_evaluable(next(r for r in store.list_runs() if r.run == run))
    if not store.list_checkpoints(run):
        raise NoCheckpointsError(f"run {run!r} has no published checkpoints yet")
    try:
        selection = store_io.select(
            store, run, curve, request.window, interval=request.interval, count=request.count, end=request.end
        )
    except TheoryError as e:
        raise InvalidWindowError(str(e)) from e
    return JobSpec(
        selection=selection,
        request=request,
        evaluate=evaluate,
        eval_config=(eval_config or EvalConfig()) if evaluate else None,
        model_name=selection.model_name(out_format),
        allow_nonfinite=allow_nonfinite,
        out_format=out_format,
    )


RECENT_FRACTION = 0.5
"""A window covering more than this share of the run so far gets a warning: the papers anneal over
the last 10-20% of training, and an early checkpoint weighs heavily in a long window."""


def window_warnings(run: RunManifest | None, selection: AnnealSelection) -> list[str]:
    """What a user should know about a window before trusting its result (empty when nothing)."""
    out = []
    end = selection.window_end
    if selection.window > RECENT_FRACTION * end:
        share = 100.0 * selection.window / end if end else 100.0
        out.append(
            f"the window covers {share:.0f}% of the run so far ({format_tokens(selection.window)} of "
            f"{format_tokens(end)} tokens); the papers anneal over the last 10-20%, so an early checkpoint "
            "weighs heavily here"
        )
    warmup = _warmup_tokens(run)
    if warmup and selection.window_start < warmup:
        out.append(
            f"the window starts at {format_tokens(selection.window_start)} tokens, inside warm-up (until "
            f"{format_tokens(warmup)}): checkpoints still warming up are merged"
        )
    return out


def _warmup_tokens(run: RunManifest | None) -> int | None:
    """Warm-up length recorded by wsm's trainer (steps x tokens per step); None when unknown."""
    if run is None:
        return None
    steps, per_step = run.schedule.get("warmup_steps"), run.data.get("tokens_per_step")
    if isinstance(steps, int) and isinstance(per_step, int):
        return steps * per_step
    return None


def suggestion(run: RunManifest | None, tokens: list[int]) -> WindowSuggestion | None:
    """The window to anneal first for a run with checkpoints at ``tokens`` (None before two exist)."""
    if len(tokens) < 2:
        return None
    ordered = sorted(tokens)
    interval = int(statistics.median(b - a for a, b in itertools.pairwise(ordered)))
    return suggest_window(ordered[-1], max(1, interval), warmup=_warmup_tokens(run) or 0)
