"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis, ASGI in-process):
no generated request may produce a 5xx. The enqueuer is a fake; the store holds a synthetic run.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from tests.api.conftest import FakeEnqueuer
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from wsm.store import Store

_tmp = Path(tempfile.mkdtemp(prefix="wsm-fuzz-"))
atexit.register(shutil.rmtree, _tmp, True)  # the schema is built at import, before fixtures exist
_settings = make_settings(store_url=str(_tmp / "store"), state_dir=str(_tmp / "state"), api_token=None)
_store = Store(_settings.store_url, settings=_settings)
make_run(_store, tokens=[i * 10_000_000 for i in range(1, 6)], elements=256, tensors=1)
app = create_app(_settings, store=_store, enqueuer=FakeEnqueuer())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
