"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis, ASGI in-process),
with every check schemathesis has: no 5xx, every status code, content type, header and body as
documented, schema-valid requests accepted, invalid ones rejected, auth enforced as declared,
405 with a true ``Allow`` for undocumented methods. The enqueuer is a fake; the store holds a
synthetic run.

Twice: with a token (the deployment's set-up: auth required on ``POST /anneal``) and without
one (auth documented as optional). One allowance, on ``POST /anneal``, ``/policies`` and ``/grids``
only: a schema-valid body may still get 422, because the window, the curve's parameters and the
run's checkpoints are checked together (``invalid_window``: longer than the run; ``invalid_curve``:
alpha without ema) and no schema can say that; likewise on ``POST /runs`` and
``POST /runs/{run}/sync``, whose source directory must exist and hold checkpoints.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from api.app import create_app
from tests.api.conftest import FakeEnqueuer
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from wsm.store import Store

TOKEN = "fuzz-3b1f0c8e9d2a4f6b"
POSITIVE_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

_tmp = Path(tempfile.mkdtemp(prefix="wsm-fuzz-"))
atexit.register(shutil.rmtree, _tmp, True)  # the schema is built at import, before fixtures exist


def _schema(name: str, token: str | None) -> BaseSchema:
    settings_ = make_settings(
        store_url=str(_tmp / name / "store"), state_dir=str(_tmp / name / "state"), api_token=token
    )
    store = Store(settings_.store_url, settings=settings_)
    # Checkpoints 20B apart: the schema's example window, "80B", is one the run can serve.
    make_run(store, tokens=[i * 20 * 10**9 for i in range(1, 6)], elements=256, tensors=1)
    config: dict[str, Any] = {
        "checks": {"enabled": True},
        "operations": [
            *(
                {
                    "include-path": path,
                    "include-method": "POST",
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*POSITIVE_ACCEPTED, "422"]}
                    },
                }
                for path in ("/anneal", "/policies", "/grids")
            ),
            {
                # A schema-valid registration names a source the server lists: a random one is 422.
                "include-path-regex": "^/runs(/[^/]+/sync)?$",
                "include-method": "POST",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_ACCEPTED, "422"]}},
            },
        ],
    }
    if token:
        config["auth"] = {"openapi": {"HTTPBearer": {"bearer": token}}}
    app = create_app(settings_, store=store, enqueuer=FakeEnqueuer())
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(config))


with_token = _schema("token", TOKEN)
without_token = _schema("open", None)


@with_token.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_with_a_token(case: Any) -> None:
    case.call_and_validate()


@without_token.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_without_a_token(case: Any) -> None:
    case.call_and_validate()
