"""``/curves``: the decay curves theory's registry knows, served so that no client re-implements them."""

from __future__ import annotations

from fastapi import APIRouter

from api.schemas import CurveList, CurveOut, LRPoint
from theory import curve_catalog

router = APIRouter(tags=["curves"])


@router.get("/curves", response_model=CurveList, summary="Decay curves: names, parameters and shapes")
async def list_curves() -> CurveList:
    """Every curve ``POST /anneal`` accepts, with its aliases, parameters and f(x) sampled on [0, 1]."""
    return CurveList(
        curves=[
            CurveOut(
                name=c.name,
                aliases=list(c.aliases),
                description=c.description,
                parameters=[*c.parameters, "floor"],
                shape=[LRPoint(x=x, y=y) for x, y in c.samples] if c.samples is not None else None,
            )
            for c in curve_catalog()
        ]
    )
