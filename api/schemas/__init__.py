"""Request and response models of the HTTP API (the OpenAPI schema is generated from these).

This module is a contract: the dashboard (api/dashboard.py, api/static/) and ``wsm anneal`` read
these shapes. Fields are only ever added, never renamed or retyped. Every field is typed and
described so the OpenAPI document is complete.

Model ids: an annealed or baseline model is addressed as ``<run>:<name>`` (``:`` can never occur
in a store name, so the split is unambiguous), e.g. ``r1:anneal-1-sqrt-w80B-at-100B-n5-1a2b3c4d``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from anneal.jobs import DEFAULT_OUT_FORMAT, OUT_FORMATS, JobSpec
from theory import ALIASES, CURVE_NAMES

JobState = Literal["queued", "running", "done", "failed"]
JobStage = Literal[
    "queued",
    "resolving",
    "merging",
    "publishing",
    "waiting_eval",
    "evaluating_anneal",
    "evaluating_baseline",
    "done",
    "failed",
]
TokenCount = int | str
MAX_COEFFICIENTS = 4096


class AnnealRequest(BaseModel):
    """``POST /anneal``: anneal a window of a run's checkpoints along a decay curve."""

    model_config = ConfigDict(extra="forbid")

    curve: str | list[float] = Field(
        default="1-sqrt",
        description=(
            f"Decay curve: a name ({', '.join(n for n in CURVE_NAMES if n != 'custom')}; aliases "
            f"{', '.join(ALIASES)}; see GET /curves) or the explicit non-increasing decay coefficients "
            "w_1..w_k of a custom curve (k+1 checkpoints are then merged)."
        ),
        examples=["1-sqrt", [0.75, 0.5, 0.25]],
        max_length=MAX_COEFFICIENTS,
    )
    window: TokenCount = Field(
        description="Window width in tokens: an integer or a size like '80B', '200k'.", examples=["80B"]
    )
    run: str | None = Field(
        default=None, description="Run name; default: the only run, or the one with the newest checkpoint."
    )
    interval: TokenCount | None = Field(
        default=None,
        description="Merge checkpoints on this spacing (tokens); default: every checkpoint in the window.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Number of checkpoints (interval = window / count); excludes interval.",
    )
    end: TokenCount | None = Field(
        default=None, description="Window end in tokens; default: the run's newest checkpoint."
    )
    floor: float = Field(default=0.0, ge=0.0, lt=1.0, description="Decay to this fraction of the peak LR.")
    alpha: float | None = Field(
        default=None, gt=0.0, le=1.0, description="EMA weight on the newest checkpoint (curve 'ema' only)."
    )
    evaluate: bool = Field(
        default=True,
        description="Also run the SFT evaluation of the annealed model and of the WSO checkpoint.",
    )
    allow_nonfinite: bool = Field(
        default=False,
        description=(
            "Publish the merge even if a checkpoint or the result holds NaN or Inf; by default the job "
            "fails naming the tensor and checkpoint."
        ),
    )
    out_format: str = Field(
        default=DEFAULT_OUT_FORMAT,
        description=(
            f"Layout of the annealed model ({', '.join(OUT_FORMATS)}): safetensors for transformers, "
            "mergekit and vLLM; torch_dist (a DCP directory in Megatron-LM's layout, for --load and dist_checkpointing.load at any "
            "parallelism). The model's name ends in -torch_dist then."
        ),
        json_schema_extra={"enum": list(OUT_FORMATS)},
    )

    @field_validator("out_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return JobSpec.check_format(value)


class CheckpointWeight(BaseModel):
    """One checkpoint chosen for a merge and its weights (WSM paper, Theorem 3.1)."""

    tokens: int = Field(description="Training tokens of the checkpoint.")
    sha256: str | None = Field(default=None, description="sha256 of the checkpoint's weights.")
    c: float = Field(description="Merge coefficient c_j of this checkpoint (coefficients sum to 1).")
    w: float | None = Field(
        default=None,
        description="Decay coefficient w_j of the segment ending at this checkpoint (None for the oldest).",
    )


class SelectionOut(BaseModel):
    """The checkpoints a job merges and the window they really cover."""

    curve: dict[str, Any] = Field(description="Curve parameters: name, alpha, floor, coefficients.")
    curve_label: str = Field(description="Short human label of the curve, e.g. '1-sqrt' or 'ema(α=0.2)'.")
    window: int = Field(description="Effective window in tokens (window_end - window_start).")
    requested_window: int = Field(description="Window asked for, in tokens.")
    window_start: int = Field(description="Start of the effective window, in tokens.")
    window_end: int = Field(description="End of the window: the newest merged checkpoint, in tokens.")
    exact: bool = Field(description="Whether the effective window equals the requested one.")
    checkpoints: list[CheckpointWeight] = Field(description="Chosen checkpoints, oldest first.")


class EvalOut(BaseModel):
    """One evaluation recorded in the store."""

    name: str = Field(description="Evaluation name in the store (runs/<run>/evals/<name>).")
    run: str = Field(description="Run the evaluated model belongs to.")
    model_dir: str = Field(
        description="Store-relative directory of what was evaluated, or hf:<path> for a Hugging Face "
        "directory evaluated in this run's context (wsm evaluate DIR)."
    )
    metrics: dict[str, float] = Field(description="Metric name to value.")
    config: dict[str, Any] = Field(description="Evaluation configuration.")
    seeds: list[int] = Field(description="Seeds used.")
    duration_s: float = Field(description="Wall-clock seconds the evaluation took.")
    created_at: datetime = Field(description="When the evaluation was recorded (UTC).")


class JobEvaluations(BaseModel):
    """Both evaluations of a job, once recorded."""

    anneal: EvalOut | None = Field(default=None, description="Evaluation of the annealed (merged) model.")
    baseline: EvalOut | None = Field(
        default=None, description="Evaluation of the plain WSO checkpoint at the window's end."
    )


class JobOut(BaseModel):
    """An anneal job: what it merges, where it is, and what it produced."""

    job_id: str = Field(
        description="Deterministic id: same run, curve, source checkpoints and eval config = same job."
    )
    run: str = Field(description="Run the job anneals.")
    state: JobState = Field(description="queued, running, done or failed.")
    stage: JobStage = Field(description="Current pipeline stage.")
    phases: list[JobStage] = Field(
        default_factory=list,
        description="The stages this job goes through, in order: 'publishing' only for a split merge, "
        "the evaluation stages only when it evaluates.",
    )
    progress: float = Field(ge=0.0, le=100.0, description="Percent of the current stage done (0-100).")
    message: str = Field(default="", description="Human-readable status line.")
    error: str | None = Field(default=None, description="Why the job failed (state 'failed').")
    evaluate: bool = Field(description="Whether the job evaluates the models.")
    selection: SelectionOut = Field(description="Chosen checkpoints with c and w, and the effective window.")
    model_name: str = Field(description="Name the annealed model is (or will be) published under.")
    model_id: str | None = Field(
        default=None, description="Id of the published model ('<run>:<name>') once merged."
    )
    evaluations: JobEvaluations = Field(default_factory=JobEvaluations, description="Recorded evaluations.")
    attempts: int = Field(default=0, description="How many times a worker started the job.")
    created_at: datetime = Field(description="When the job was first requested (UTC).")
    updated_at: datetime = Field(description="Last change of the record (UTC).")
    heartbeat_at: datetime | None = Field(
        default=None, description="Last sign of life of the worker running it."
    )
    finished_at: datetime | None = Field(default=None, description="When the job ended (done or failed).")
    status_url: str = Field(description="URL of GET /anneal/{job_id}.")


class AnnealAccepted(JobOut):
    """Answer to ``POST /anneal``: the job (new, already running, or finished)."""

    created: bool = Field(description="True if this request created the job; false if it already existed.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What to know about the window before trusting the result: it reaches into warm-up, "
        "or covers most of the run so far.",
    )


class JobList(BaseModel):
    """Jobs of a run, newest first."""

    jobs: list[JobOut] = Field(description="Jobs, newest first.")


class RunSummary(BaseModel):
    """A pre-training run, briefly."""

    run: str = Field(description="Run name.")
    description: str = Field(description="Free-text description.")
    created_at: datetime = Field(description="When the run was registered (UTC).")
    checkpoints: int = Field(description="Number of published checkpoints.")
    latest_tokens: int | None = Field(description="Tokens of the newest checkpoint, if any.")
    source: ExternalSourceOut | None = Field(
        default=None, description="Where an external run's checkpoints live; null for a run wsm trained."
    )


class RunList(BaseModel):
    """All runs of the store."""

    runs: list[RunSummary] = Field(description="Runs, sorted by name.")


class Suggestion(BaseModel):
    """The window to anneal first: the recent part of the run, once the run is long enough."""

    window: int = Field(description="Window width in tokens, a whole number of checkpoint intervals.")
    checkpoints: int = Field(description="Checkpoints the window merges.")
    ready_at: int = Field(description="Run length in tokens from which the window is recent enough.")
    ready: bool = Field(description="Whether the run has reached ready_at.")
    reason: str = Field(description="Why not yet (empty when ready).")


class RunDetail(RunSummary):
    """A run with its configuration, progress and metrics."""

    suggestion: Suggestion | None = Field(
        default=None, description="The window to anneal first (null before two checkpoints exist)."
    )

    model: dict[str, Any] = Field(description="Model configuration (trainer-defined).")
    tokenizer: dict[str, Any] = Field(description="Tokenizer configuration (trainer-defined).")
    data: dict[str, Any] = Field(description="Data configuration (trainer-defined).")
    schedule: dict[str, Any] = Field(description="LR schedule configuration (trainer-defined).")
    extra: dict[str, Any] = Field(description="Other trainer-defined fields.")
    latest_step: int | None = Field(description="Optimizer step of the newest checkpoint, if known.")
    metrics: list[dict[str, Any]] = Field(
        description="Training metrics records (trainer-defined keys such as tokens, step, loss, lr), oldest first."
    )
    metrics_truncated: bool = Field(
        description="True if only the newest records are returned (see ?metrics_limit)."
    )


class CheckpointOut(BaseModel):
    """A published checkpoint of a run."""

    run: str = Field(description="Run name.")
    tokens: int = Field(description="Training tokens at the checkpoint.")
    step: int | None = Field(description="Optimizer step, if known.")
    created_at: datetime = Field(description="When it was published (UTC).")
    bytes: int = Field(description="Total size of its files.")
    sha256: str | None = Field(description="sha256 of its weights file.")
    extra: dict[str, Any] = Field(description="Trainer-defined fields (lr, loss, ...).")


class CheckpointList(BaseModel):
    """Checkpoints of a run, oldest first."""

    checkpoints: list[CheckpointOut] = Field(description="Checkpoints, oldest first.")


ExternalLayoutName = Literal["auto", "megatron", "torchtitan", "olmo-core"]


class ExternalSourceOut(BaseModel):
    """Where an external run lives: wsm reads its checkpoints in place and copies none of them."""

    uri: str = Field(
        description="The run's checkpoint directory (s3:// URI, or a server path shown redacted)."
    )
    layout: ExternalLayoutName = Field(description="Checkpoint layout: megatron, torchtitan or olmo-core.")
    tokens_per_step: int | None = Field(
        description="Tokens per training step; null: counted from Megatron's saved arguments."
    )
    tokenizer: bool = Field(description="Whether a tokenizer is registered (evaluation needs one).")


class RunRegister(BaseModel):
    """``POST /runs``: register an external run (Megatron-LM, torchtitan or OLMo-core DCP checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="Run name in the store.", examples=["llama-8b"])
    source: str = Field(
        description="The run's checkpoint directory as the server sees it: an absolute path or an s3:// URI "
        "(read with the server's S3 settings).",
        examples=["/lustre/checkpoints/llama-8b"],
        max_length=4096,
    )
    layout: ExternalLayoutName = Field(
        default="auto",
        description="megatron (iter_<7 digits>/), torchtitan (step-<N>/), olmo-core (step<N>/model_and_optim/); "
        "auto: the one found there.",
    )
    tokens_per_step: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per training step (a checkpoint's tokens = step x this); required for torchtitan "
        "and OLMo-core, optional for Megatron (whose common.pt gives global batch size x sequence length).",
    )
    tokenizer: str | None = Field(
        default=None,
        description="A Hugging Face tokenizer.json (server path or s3:// URI), copied into the store; "
        "evaluation needs it.",
        max_length=4096,
    )
    description: str = Field(default="", max_length=2000, description="Free-text description.")
    overwrite: bool = Field(
        default=False, description="Register an external run of that name again (e.g. to add a tokenizer)."
    )


class SyncOut(BaseModel):
    """What listing an external run's source found."""

    added: list[int] = Field(description="Tokens of the checkpoints registered now.")
    removed: list[int] = Field(description="Tokens of the checkpoints gone from the source (unregistered).")
    errors: list[str] = Field(description="Checkpoints that could not be registered, one line each.")
    checkpoints: int = Field(description="Checkpoints of the run after the sync.")


class RunRegistered(BaseModel):
    """Answer to ``POST /runs`` and ``POST /runs/{run}/sync``: the run and what its listing found."""

    run: RunSummary = Field(description="The run.")
    sync: SyncOut = Field(description="What the listing of its source found.")


class SourceOut(BaseModel):
    """One checkpoint merged into a model."""

    tokens: int = Field(description="Training tokens of the source checkpoint.")
    sha256: str = Field(description="sha256 of its weights.")
    c: float = Field(description="Merge coefficient c_j.")
    w: float = Field(description="Decay coefficient w_j from the curve.")


class LRPoint(BaseModel):
    """One point of a curve: position (tokens, or x in [0, 1]) and LR relative to the peak."""

    x: float = Field(description="Position: tokens, or the fraction x of the window for curve shapes.")
    y: float = Field(description="LR relative to the constant peak.")


class CurveOut(BaseModel):
    """A decay curve of theory's registry."""

    name: str = Field(description="Canonical name, as POST /anneal accepts it.")
    aliases: list[str] = Field(description="Other names accepted for it.")
    description: str = Field(description="What the curve is.")
    parameters: list[str] = Field(
        description="Request fields it takes: floor, alpha (ema), coefficients (custom)."
    )
    shape: list[LRPoint] | None = Field(
        description="f(x) sampled on [0, 1]; null for curves defined per checkpoint (ema, custom)."
    )


class CurveList(BaseModel):
    """The decay curves, in registry order."""

    curves: list[CurveOut] = Field(description="Curves.")


class ModelOut(BaseModel):
    """A published model (annealed or baseline) with its manifest."""

    id: str = Field(description="Model id '<run>:<name>'.")
    run: str = Field(description="Run name.")
    name: str = Field(description="Model name within the run.")
    kind: Literal["anneal", "baseline"] = Field(description="anneal (merged) or baseline (real decay).")
    tokens: int = Field(description="Training tokens the model stands for.")
    dtype: str = Field(description="Weights dtype.")
    curve: dict[str, Any] | None = Field(description="Decay curve (anneal).")
    window_start: int | None = Field(description="Start of the merged window in tokens (anneal).")
    window_end: int | None = Field(description="End of the merged window in tokens (anneal).")
    sources: list[SourceOut] = Field(description="Merged checkpoints with c and w (anneal).")
    lr_steps: list[LRPoint] | None = Field(
        description="The step-function LR (relative to peak, x in tokens) the merge is equivalent to (anneal)."
    )
    target_curve: list[LRPoint] | None = Field(
        description="The continuous decay curve over the window that the steps approximate (position-based curves)."
    )
    format: str = Field(
        description="Layout of the weights: safetensors, or torch_dist (Megatron-LM's DCP layout, "
        "downloaded file by file with ?file=)."
    )
    files: list[str] = Field(description="Data files of the model.")
    bytes: int = Field(description="Total size of its files.")
    timings: dict[str, float] = Field(description="Seconds per merge phase.")
    created_at: datetime = Field(description="When it was published (UTC).")
    weights_url: str = Field(description="URL to download the weights (GET /models/{id}/weights).")


class ModelList(BaseModel):
    """Models of a run, ordered by tokens then name."""

    models: list[ModelOut] = Field(description="Models.")


class EvalList(BaseModel):
    """Evaluations of a run."""

    evals: list[EvalOut] = Field(description="Evaluations.")


class ComponentHealth(BaseModel):
    """Health of one dependency."""

    ok: bool = Field(description="Whether it answered (the store: and takes writes).")
    detail: str = Field(description="What was checked, or why it failed.")
    writable: bool | None = Field(
        default=None,
        description="The store: whether it takes writes (a probe file, checked every few seconds).",
    )


class Health(BaseModel):
    """``GET /healthz``: the store and the broker, separately."""

    status: Literal["ok", "degraded"] = Field(description="ok if every component is ok.")
    store: ComponentHealth = Field(description="The checkpoint store.")
    broker: ComponentHealth = Field(description="The job broker.")


class ErrorOut(BaseModel):
    """Every 4xx/5xx body."""

    error: str = Field(description="Error type, e.g. 'invalid_request', 'unknown_run', 'broker_unavailable'.")
    detail: str = Field(description="What is wrong, naming the bad value and the valid choices.")
    choices: list[str] | None = Field(default=None, description="Valid values, when there is a closed set.")
