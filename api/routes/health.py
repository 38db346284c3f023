"""``/healthz``: is the store readable and writable, does the broker answer (reported separately).

Writable means a small probe file could be written and removed (wsm/store/writable.py), checked at
most every ``WSM_API_STORE_PROBE_S``; a store that is full, read-only or denies writes is reported
with its reason, and POST /anneal refuses new jobs meanwhile. Unauthenticated, so its details name
the store by its URL (``local store`` for a local one) and carry no server paths (api/redact.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api import redact
from api.deps import PublisherDep, StoreDep
from api.schemas import ComponentHealth, Health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"description": "Degraded", "model": Health}},
    summary="Health of the store and of the broker",
)
def healthz(request: Request, response: Response, store: StoreDep, publisher: PublisherDep) -> Health:
    redactor = redact.current()
    name = redactor.store_label
    try:
        runs = store.list_runs()
    except Exception as e:  # any failure to list is "store down", whatever the backend raised
        store_health = ComponentHealth(ok=False, detail=redactor.text(f"{name}: {type(e).__name__}: {e}"))
    else:
        refused = request.app.state.write_probe.probe()
        if refused is None:
            store_health = ComponentHealth(
                ok=True, detail=f"{name}: {len(runs)} run(s), writable", writable=True
            )
        else:
            detail = f"{name}: {len(runs)} run(s), not writable: {refused.reason}"
            store_health = ComponentHealth(ok=False, detail=redactor.text(detail), writable=False)
    try:
        backlog = publisher.backlog
        detail = f"{publisher.probe()}; {backlog} accepted job(s) not yet sent"
        broker_health = ComponentHealth(ok=True, detail=redactor.text(detail))
    except Exception as e:
        broker_health = ComponentHealth(ok=False, detail=redactor.text(str(e)))
    ok = store_health.ok and broker_health.ok
    if not ok:
        response.status_code = 503
    return Health(status="ok" if ok else "degraded", store=store_health, broker=broker_health)
