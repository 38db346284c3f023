"""The store layout: every store-relative path is built here (and documented in docs/STORE.md).

Paths are relative to the store root and always use ``/``. Builders validate their inputs, so a
path produced here never leaves its collection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wsm.store.names import checkpoint_name, validate_name

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
MODEL_INDEX_FILE = "model.safetensors.index.json"
TRAIN_STATE_FILE = "train_state.pt"
TOKENIZER_FILE = "tokenizer.json"
MEGATRON_TRACKER_FILE = "latest_checkpointed_iteration.txt"
"""Megatron-LM's pointer to the ``iter_<N>/`` directory of a ``torch_dist`` checkpoint."""
DCP_METADATA_FILE = ".metadata"
"""Written last into a PyTorch DCP directory: its presence marks the directory complete."""

RUNS = "runs"
CHECKPOINTS = "checkpoints"
MODELS = "models"
EVALS = "evals"
METRICS = "metrics"
PINS = "pins"
JOBS = "jobs"
POLICIES = "policies"
GRIDS = "grids"

SEGMENT_WIDTH = 10
"""Digits of a metrics segment number (``0000000007.jsonl``)."""

_ITER_DIR_RE = re.compile(r"^(iter_[0-9]{7,}|release)$")
"""Megatron-LM's directory of one save: ``iter_<7+ digits>``, or ``release`` (tracker text ``release``)."""
_ARTIFACT_DIR_RE = re.compile(rf"^{RUNS}/([^/]+)/({CHECKPOINTS}|{MODELS}|{EVALS})/([^/]+)/")
_SEGMENT_RE = re.compile(rf"^[0-9]{{{SEGMENT_WIDTH}}}\.jsonl$")


def run_dir(run: str) -> str:
    return f"{RUNS}/{validate_name(run, 'run name')}"


def run_manifest_path(run: str) -> str:
    return f"{run_dir(run)}/{MANIFEST}"


def checkpoints_dir(run: str) -> str:
    return f"{run_dir(run)}/{CHECKPOINTS}"


def checkpoint_dir(run: str, tokens: int) -> str:
    return f"{checkpoints_dir(run)}/{checkpoint_name(tokens)}"


def models_dir(run: str) -> str:
    return f"{run_dir(run)}/{MODELS}"


def model_dir(run: str, name: str) -> str:
    return f"{models_dir(run)}/{validate_name(name, 'model name')}"


def evals_dir(run: str) -> str:
    return f"{run_dir(run)}/{EVALS}"


def eval_dir(run: str, name: str) -> str:
    return f"{evals_dir(run)}/{validate_name(name, 'evaluation name')}"


def metrics_dir(run: str) -> str:
    return f"{run_dir(run)}/{METRICS}"


def metrics_segment_path(run: str, seq: int) -> str:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 10**SEGMENT_WIDTH:
        raise ValueError(f"metrics segment number out of range: {seq!r}")
    return f"{metrics_dir(run)}/{seq:0{SEGMENT_WIDTH}d}.jsonl"


def parse_segment_name(name: str) -> int | None:
    """Segment number of a metrics file name, or None for anything else (temporaries)."""
    return int(name[:SEGMENT_WIDTH]) if _SEGMENT_RE.fullmatch(name) else None


def pins_dir(run: str) -> str:
    return f"{run_dir(run)}/{PINS}"


def pin_path(run: str, job_id: str) -> str:
    return f"{pins_dir(run)}/{validate_name(job_id, 'job id')}.json"


def jobs_dir(run: str) -> str:
    return f"{run_dir(run)}/{JOBS}"


def job_path(run: str, job_id: str) -> str:
    """The record of an anneal job (a JSON file owned by anneal/jobs.py; docs/STORE.md "Jobs")."""
    return f"{jobs_dir(run)}/{validate_name(job_id, 'job id')}.json"


def policies_dir(run: str) -> str:
    return f"{run_dir(run)}/{POLICIES}"


def policy_path(run: str, policy_id: str) -> str:
    """An annealing policy (a JSON file owned by anneal/policies.py; docs/STORE.md "Policies")."""
    return f"{policies_dir(run)}/{validate_name(policy_id, 'policy id')}.json"


def grids_dir(run: str) -> str:
    return f"{run_dir(run)}/{GRIDS}"


def grid_path(run: str, grid_id: str) -> str:
    """A grid of anneal jobs (a JSON file owned by anneal/grids.py; docs/STORE.md "Grids")."""
    return f"{grids_dir(run)}/{validate_name(grid_id, 'grid id')}.json"


def split_artifact_dir(path: str) -> tuple[str, str, str] | None:
    """``(run, collection, name)`` of an artifact directory such as ``runs/r/models/m``, else None."""
    m = _ARTIFACT_DIR_RE.fullmatch(path.strip().rstrip("/") + "/")
    return (m.group(1), m.group(2), m.group(3)) if m else None


def artifact_dir_of(relpath: str) -> str | None:
    """The artifact directory (checkpoint/model/eval) containing ``relpath``, if any."""
    m = _ARTIFACT_DIR_RE.match(relpath)
    return m.group(0).rstrip("/") if m else None


def megatron_iter_dir(step: int) -> str:
    """Megatron-LM's name of the directory of the checkpoint after ``step`` iterations."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"iteration must be a non-negative int, not {step!r}")
    return f"iter_{step:07d}"


def dcp_dir_of(file_names: Iterable[str]) -> str | None:
    """The DCP directory of a checkpoint in Megatron-LM's layout (``iter_0000100``), from the
    names its manifest lists; None for a checkpoint without one (``model.safetensors`` layout)."""
    names = set(file_names)
    if MEGATRON_TRACKER_FILE not in names:
        return None
    dirs = sorted(
        n.split("/", 1)[0]
        for n in names
        if n.count("/") == 1
        and n.endswith(f"/{DCP_METADATA_FILE}")
        and _ITER_DIR_RE.match(n.split("/", 1)[0])
    )
    return dirs[-1] if dirs else None
