"""``/runs/{run}/compare`` and ``/runs/{run}/frontier``: merges against real decay, and the annealed
frontier along the run (read-only). The numbers come from anneal/pairing.py and anneal/frontier.py;
the page and ``wsm compare`` only format them.
"""

from __future__ import annotations

from fastapi import APIRouter

from anneal import resolve
from anneal.evidence import RunEvidence
from anneal.frontier import Frontier, frontier
from anneal.pairing import Comparison, comparison
from api import redact
from api.deps import StoreDep, run_name
from api.errors import responses

router = APIRouter(tags=["research"])


def _evidence(store: StoreDep, run: str) -> RunEvidence:
    return RunEvidence.load(store, resolve.choose_run(store, run_name(run)))


@router.get(
    "/runs/{run}/compare",
    response_model=Comparison,
    responses=responses(400, 404),
    summary="Every merge beside its real-decay twin: both values, gap, share recovered, noise",
)
def get_comparison(run: str, store: StoreDep) -> Comparison:
    """Merges paired with the real decay (``wsm train branch``) of the same window and curve.

    Per metric: the WSO checkpoint, the merge and the decay (mean, sd, n over seeds and repeated
    evaluations), the gap in %, the share of the WSO → decay difference the merge recovers, and
    whether that difference is within the noise (neighbouring checkpoints' spread, or seeds).
    """
    out = comparison(_evidence(store, run))
    if out.eval_config is not None:
        out.eval_config = redact.current().json(out.eval_config)
    return out


@router.get(
    "/runs/{run}/frontier",
    response_model=Frontier,
    responses=responses(400, 404),
    summary="The annealed frontier: WSO and every annealed variant at each point of the run",
)
def get_frontier(run: str, store: StoreDep) -> Frontier:
    """What an anneal at each point scores, beside the WSO checkpoint there: when to stop."""
    out = frontier(_evidence(store, run))
    if out.eval_config is not None:
        out.eval_config = redact.current().json(out.eval_config)
    return out
