"""Shared fixtures: an S3 server on loopback (moto) and a ``store`` on every backend.

The moto server starts once per session on a free loopback port; each test gets a fresh bucket,
so tests never share state and never talk to real AWS. Any test dir can use ``store`` (local dir,
``memory://`` and S3, the S3 case marked ``s3``) or ``s3_settings``/``s3_store`` directly.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from wsm.settings import Settings
from wsm.store import Store

S3_KEY = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"
SMALL_BLOCK = 5 * 1024 * 1024  # the S3 minimum part size: keeps multipart tests small


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1, shared by the session."""
    from moto.server import ThreadedMotoServer

    # Dummy credentials in the environment too, so no code path can find real ones.
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_EC2_METADATA_DISABLED="true"
    )
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_settings(**fields: Any) -> Settings:
    """Settings independent of the developer's environment and ``.env``."""
    base: dict[str, Any] = {
        "store_block_size": SMALL_BLOCK,
        "s3_endpoint_url": None,
        "s3_region": None,
        "s3_access_key_id": None,
        "s3_secret_access_key": None,
        "retention_max_window_tokens": None,
        "retention_sparse_interval_tokens": None,
        # Starlette's TestClient sends "Host: testserver"; the real defaults are tested on their own.
        "api_allowed_hosts": ["testserver", "localhost", "127.0.0.1", "::1"],
    }
    base.update(fields)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture()
def s3_settings(moto_endpoint: str) -> Iterator[Settings]:
    """Settings pointing at a fresh, empty bucket on the moto server (``store_url`` set)."""
    import boto3
    import s3fs

    bucket = f"wsm-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
    )
    client.create_bucket(Bucket=bucket)
    yield make_settings(
        store_url=f"s3://{bucket}/store",
        s3_endpoint_url=moto_endpoint,
        s3_access_key_id=S3_KEY,
        s3_secret_access_key=S3_SECRET,
        s3_region=S3_REGION,
    )
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture()
def s3_store(s3_settings: Settings) -> Store:
    return Store(s3_settings.store_url, settings=s3_settings)


@pytest.fixture()
def local_store(tmp_path: Any) -> Store:
    return Store(str(tmp_path / "store"), settings=make_settings())


@pytest.fixture()
def memory_store() -> Iterator[Store]:
    from fsspec.implementations.memory import MemoryFileSystem

    name = f"wsm-{uuid.uuid4().hex[:12]}"
    yield Store(f"memory://{name}", settings=make_settings())
    for key in [k for k in MemoryFileSystem.store if k.startswith(f"/{name}")]:
        MemoryFileSystem.store.pop(key, None)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> Store:
    """The same tests on every backend."""
    fixture = {"local": "local_store", "memory": "memory_store", "s3": "s3_store"}[request.param]
    result: Store = request.getfixturevalue(fixture)
    return result
