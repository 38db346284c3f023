"""HTTP hardening (issue 16): size limits, allowed hosts, loopback-only serving, no server paths in
responses, a schema that documents every answer, and tokens that are never logged or placeholders.

Size limits and Host checks go through a real uvicorn on a free loopback port and a raw socket:
chunked bodies and endless headers behave differently there than through TestClient.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import select
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from anneal import jobs
from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from api.exposure import ExposureError, allowed_hosts, host_allowed
from api.openapi import NAMED
from api.redact import Redactor
from api.server import HeadLimitedHttpTools
from tests.api.conftest import FakeEnqueuer
from tests.api.fixtures import make_run
from tests.conftest import make_settings
from wsm.settings import Settings, get_settings
from wsm.store import Store, StoreError, layout, validate_name

ROOT = Path(__file__).resolve().parents[2]
HEAD_LIMIT = 4096
BODY_LIMIT = 1024
BODY = {"run": "r1", "curve": "1-sqrt", "window": "20M", "evaluate": False}


class SmallHead(HeadLimitedHttpTools):
    max_head_bytes = HEAD_LIMIT


def _settings(tmp: Path, **fields: Any) -> Settings:
    base: dict[str, Any] = {
        "store_url": str(tmp / "store"),
        "state_dir": str(tmp / "state"),
        "api_token": None,
        "api_max_body_bytes": BODY_LIMIT,
        "api_max_header_bytes": HEAD_LIMIT,
        "api_allowed_hosts": None,  # the real default: loopback names and api_host
    }
    return make_settings(**{**base, **fields})


def _app(tmp: Path, **fields: Any) -> FastAPI:
    settings = _settings(tmp, **fields)
    store = Store(settings.store_url, settings=settings)
    if not store.list_runs():
        make_run(store, tokens=[10_000_000, 20_000_000, 30_000_000], elements=64, tensors=1)
    return create_app(settings, store=store, enqueuer=FakeEnqueuer())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(app: FastAPI, http: Any, host: str = "127.0.0.1") -> Iterator[int]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, http=http, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a uvicorn with ``wsm serve``'s protocol (head cap at HEAD_LIMIT)."""
    yield from _serve(_app(tmp_path_factory.mktemp("capped")), SmallHead)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a uvicorn with its default protocol: only the app's own limits apply."""
    yield from _serve(_app(tmp_path_factory.mktemp("plain")), "httptools")


class Answer:
    def __init__(self, raw: bytes, sent: int) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.sent = sent

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, parts: Iterable[bytes]) -> Answer:
    """Send ``parts`` until the server answers (or they run out), then read one response."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    with conn:
        try:
            for part in parts:
                if select.select([conn], [], [], 0)[0]:
                    break  # answered already: it stopped reading what we send
                conn.sendall(part)
                sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = b""
        while True:
            head, sep, body = raw.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
            chunk = conn.recv(65536)
            if not chunk:
                break
            raw += chunk
    return Answer(raw, sent)


def _head(port: int, method: str = "GET", path: str = "/healthz", host: str | None = None) -> bytes:
    host = f"127.0.0.1:{port}" if host is None else host
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n".encode()


def _chunked(port: int, chunks: int, size: int) -> Iterator[bytes]:
    yield (
        _head(port, "POST", "/anneal")
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(chunks):
        yield b"%x\r\n%s\r\n" % (size, b" " * size)
    yield b"0\r\n\r\n"


# -- sizes ------------------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413(capped: int) -> None:
    answer = exchange(capped, _chunked(capped, 64, 512))
    assert answer.status == 413, answer.body
    assert answer.json()["error"] == "request_too_large" and str(BODY_LIMIT) in answer.json()["detail"]
    assert answer.headers["connection"] == "close"


def test_chunked_body_under_the_limit_reaches_the_route(capped: int) -> None:
    body = json.dumps(BODY).encode()
    head = (
        _head(capped, "POST", "/anneal")
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = exchange(capped, [head, b"%x\r\n%s\r\n" % (len(body), body), b"0\r\n\r\n"])
    assert answer.status == 202, answer.body
    assert answer.json()["created"] is True


def test_declared_body_over_the_limit_is_413_before_it_is_sent(capped: int) -> None:
    head = _head(capped, "POST", "/anneal") + b"Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
    answer = exchange(capped, [head])
    assert answer.status == 413 and answer.json()["error"] == "request_too_large"


def test_endless_header_is_cut_off_with_431(capped: int) -> None:
    def fifty_megabytes() -> Iterator[bytes]:
        yield _head(capped) + b"X-Big: "
        for _ in range(50 * 16):
            yield b"a" * 65536

    answer = exchange(capped, fifty_megabytes())
    assert answer.status == 431, answer.body[:200]
    assert answer.json()["error"] == "request_headers_too_large"
    # Refused while arriving: what got out of this socket is at most what the kernel buffers.
    assert answer.sent < 16 * 2**20


def test_large_header_is_431_from_the_app_under_any_server(plain: int) -> None:
    answer = exchange(plain, [_head(plain) + b"X-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n"])
    assert answer.status == 431 and answer.json()["error"] == "request_headers_too_large"


def test_headers_under_the_limit_pass(capped: int, plain: int) -> None:
    for port in (capped, plain):
        answer = exchange(port, [_head(port) + b"X-Some: " + b"a" * 2000 + b"\r\nConnection: close\r\n\r\n"])
        assert answer.status == 200, answer.body


# -- hosts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "::1"])
def test_loopback_names_are_served_by_default(capped: int, host: str) -> None:
    answer = exchange(capped, [_head(capped, host=host.format(port=capped)) + b"Connection: close\r\n\r\n"])
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", ""])
def test_other_hosts_get_400(capped: int, host: str) -> None:
    answer = exchange(capped, [_head(capped, host=host.format(port=capped)) + b"\r\n"])
    assert answer.status == 400 and answer.json()["error"] == "invalid_host", answer.body
    assert "WSM_API_ALLOWED_HOSTS" in answer.json()["detail"]


def test_a_request_without_host_gets_400(capped: int) -> None:
    answer = exchange(capped, [b"GET /healthz HTTP/1.0\r\n\r\n"])
    assert answer.status == 400 and answer.json()["error"] == "invalid_host"


def test_allowed_hosts_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSM_API_ALLOWED_HOSTS", " api.example.com , .corp.example,[::1]:8000 ")
    from_env = Settings(_env_file=None)
    assert from_env.api_allowed_hosts == ["api.example.com", ".corp.example", "[::1]:8000"]
    allowed = allowed_hosts(from_env)
    for host in ("api.example.com:8443", "API.example.com", "x.corp.example", "corp.example", "[::1]:9"):
        assert host_allowed(host, allowed), host
    for host in ("example.com", "localhost", "evilcorp.example", "api.example.com.evil"):
        assert not host_allowed(host, allowed), host
    monkeypatch.setenv("WSM_API_ALLOWED_HOSTS", "")
    assert Settings(_env_file=None).api_allowed_hosts is None
    assert host_allowed("anything", allowed_hosts(_settings(tmp_path, api_allowed_hosts=["*"])))


def test_default_hosts_follow_the_bind_address(tmp_path: Path) -> None:
    token = {"api_token": "a-real-secret-4f1c"}
    assert allowed_hosts(_settings(tmp_path)) == {"localhost", "127.0.0.1", "::1"}
    assert "10.1.2.3" in allowed_hosts(_settings(tmp_path, api_host="10.1.2.3", **token))
    wildcard = allowed_hosts(_settings(tmp_path, api_host="0.0.0.0", **token))
    assert socket.gethostname().lower() in wildcard and "localhost" in wildcard


# -- loopback only without a token ------------------------------------------------------------
def test_the_factory_refuses_a_token_less_app_beyond_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ExposureError, match="WSM_API_TOKEN is not set") as err:
            _app(tmp_path, api_host=host)
        assert "\n" not in str(err.value)
    assert _app(tmp_path, api_host="0.0.0.0", api_token="a-real-secret-4f1c")


def test_a_token_less_app_refuses_requests_off_loopback(tmp_path: Path) -> None:
    hosts = ["10.1.2.3", "localhost"]
    answer = TestClient(_app(tmp_path, api_allowed_hosts=hosts), base_url="http://10.1.2.3").get("/healthz")
    assert answer.status_code == 403 and answer.json()["error"] == "loopback_only"
    with_token = _app(tmp_path, api_allowed_hosts=hosts, api_token="a-real-secret-4f1c")
    assert TestClient(with_token, base_url="http://10.1.2.3").get("/healthz").status_code == 200


def _own_address() -> str | None:
    """A non-loopback address of this machine, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_token_less_app_bound_by_hand_to_all_addresses_answers_403_off_loopback(tmp_path: Path) -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    app = _app(tmp_path, api_allowed_hosts=["*"])  # api_host says loopback; uvicorn binds 0.0.0.0
    for port in _serve(app, SmallHead, host="0.0.0.0"):
        with socket.create_connection((address, port), timeout=10) as conn:
            conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
            assert conn.recv(65536).startswith(b"HTTP/1.1 403")
        assert exchange(port, [_head(port) + b"Connection: close\r\n\r\n"]).status == 200


# -- tokens -----------------------------------------------------------------------------------
def _env_example_token() -> str:
    text = (ROOT / ".env.example").read_text()
    match = re.search(r"(?m)^WSM_API_TOKEN=(.*)$", text)
    assert match, ".env.example has no WSM_API_TOKEN"
    return match.group(1).strip()


@pytest.mark.parametrize("token", [_env_example_token(), "CHANGE-ME", "changeme123", "  ", "your-token-here"])
def test_placeholder_tokens_are_refused_at_start(tmp_path: Path, token: str) -> None:
    with pytest.raises(ExposureError, match="placeholder") as err:
        _app(tmp_path, api_token=token)
    assert "\n" not in str(err.value) and (token.strip() == "" or token not in str(err.value))


def test_wsm_serve_refuses_a_placeholder_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsm import cli

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    monkeypatch.setenv("WSM_API_TOKEN", _env_example_token())
    monkeypatch.setenv("WSM_API_HOST", "127.0.0.1")
    get_settings.cache_clear()
    try:
        assert cli.main(["serve"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsm serve: error: WSM_API_TOKEN is a placeholder") and "\n" not in err


def test_wsm_serve_tells_the_app_what_it_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsm.commands import serve as cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    monkeypatch.delenv("WSM_API_TOKEN", raising=False)
    monkeypatch.setenv("WSM_API_HOST", "0.0.0.0")  # no token: served on loopback instead
    get_settings.cache_clear()
    try:
        args = argparse.Namespace(host=None, port=None, workers=1)
        assert cli.run(args) == 0
        assert os.environ["WSM_API_HOST"] == "127.0.0.1" == get_settings().api_host
    finally:
        get_settings.cache_clear()
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["http"] == "api.server:HeadLimitedHttpTools"


def test_wsm_up_never_logs_the_token(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsm.commands import up

    secret = "tok-9f8e7d6c5b4a"
    monkeypatch.setattr(up, "example_window", lambda args: ("10k", "40k", "200k"))  # no trainer config needed
    args = argparse.Namespace(
        no_train=False,
        config=None,
        run="demo",
        set=[],
        no_worker=False,
        no_api=False,
        host="127.0.0.1",
        port=1,
    )
    with caplog.at_level(logging.INFO):
        up._announce("http://127.0.0.1:8000", secret, args)
    assert "curl -X POST" in caplog.text and "Bearer $WSM_API_TOKEN" in caplog.text
    components = up.build_components(args, {"WSM_API_TOKEN": secret})
    assert secret not in caplog.text and secret not in repr(components)


def test_the_supervisor_masks_secrets_in_what_children_print() -> None:
    from wsm.supervisor import Component, Supervisor

    secret = "tok-9f8e7d6c5b4a"
    code = f"print('token', {secret!r}); print('url http://x/?t={secret}&')"
    out = io.StringIO()
    supervisor = Supervisor([Component("api", [sys.executable, "-c", code])], out=out, secrets=[secret, None])
    supervisor.start()
    assert supervisor.wait(poll_seconds=0.05) == 0
    assert secret not in out.getvalue()
    assert "[api     ] token ***" in out.getvalue() and "t=***&" in out.getvalue()


# -- no server paths --------------------------------------------------------------------------
_SERVER_PATH = re.compile(r"(?<![\w:/.])/(?:tmp|home|root|srv|var|data|work|mnt|opt|usr)/")


def _assert_no_server_paths(text: str, *roots: object) -> None:
    for root in roots:
        assert str(root) not in text, text
    assert not _SERVER_PATH.search(text), text


@pytest.fixture()
def leaky(tmp_path: Path) -> tuple[TestClient, Store, Settings]:
    settings = _settings(tmp_path, api_allowed_hosts=["testserver"], merge_scratch_dir=str(tmp_path / "scr"))
    store = Store(settings.store_url, settings=settings)
    make_run(store, tokens=[10_000_000, 20_000_000, 30_000_000], elements=64, tensors=1)
    store.create_run(
        "r2",
        data={"paths": ["/srv/corpora/web.jsonl", "builtin:stdlib"], "cache": f"{tmp_path}/cache/x"},
        tokenizer={"path": f"{store.root}/runs/r2/tokenizer.json"},
        description=f"copied from {tmp_path}/old-store",
    )
    app = create_app(
        settings, store=store, enqueuer=CeleryEnqueuer(settings)
    )  # the real (embedded, SQLite) broker

    @app.get("/test-store-error")
    def store_error() -> None:
        raise StoreError(f"cannot write {store.full_path('runs/r1/jobs/x.json')}: [Errno 28] No space left")

    return TestClient(app, raise_server_exceptions=False), store, settings


def test_health_names_neither_store_nor_state_paths(leaky: tuple[TestClient, Store, Settings]) -> None:
    client, store, settings = leaky
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["store"]["detail"] == "local store: 2 run(s), writable"
    assert "<state_dir>/broker.sqlite" in health.json()["broker"]["detail"]
    _assert_no_server_paths(health.text, store.root, settings.state_dir)


def test_records_carry_store_relative_paths(leaky: tuple[TestClient, Store, Settings]) -> None:
    client, store, settings = leaky
    run = client.get("/runs/r2").json()
    assert run["data"]["paths"] == ["…/web.jsonl", "builtin:stdlib"]
    assert run["data"]["cache"] == "…/x" and run["tokenizer"]["path"] == "runs/r2/tokenizer.json"
    assert run["description"] == "copied from …/old-store"
    job = client.post("/anneal", json=BODY).json()
    record = jobs.find(store, "r1", job["job_id"])
    assert record is not None
    staged = f"{store.root}/runs/r1/models/.staging-1/model.safetensors"
    record.state, record.stage = "failed", "failed"
    record.error = f"OSError: [Errno 28] No space left on device: '{staged}'"
    record.message = f"scratch {settings.merge_scratch_dir}/part-0 kept"
    jobs.save(store, record)
    failed = client.get(f"/anneal/{job['job_id']}").json()
    assert (
        failed["error"]
        == "OSError: [Errno 28] No space left on device: 'runs/r1/models/.staging-1/model.safetensors'"
    )
    assert failed["message"] == "scratch <scratch_dir>/part-0 kept"
    for path in ("/runs", "/runs/r2", "/runs/r1/checkpoints", "/anneal?run=r1", f"/anneal/{job['job_id']}"):
        _assert_no_server_paths(client.get(path).text, store.root, settings.state_dir)


def test_errors_carry_no_server_paths(leaky: tuple[TestClient, Store, Settings]) -> None:
    client, store, settings = leaky
    answer = client.get("/test-store-error")
    assert answer.status_code == 503 and answer.json()["error"] == "store_error"
    assert "cannot write runs/r1/jobs/x.json" in answer.json()["detail"]
    # A real OSError from the file system where a job record should be: a 500 that names no path.
    job = client.post("/anneal", json=BODY).json()
    record = store.full_path(layout.job_path("r1", job["job_id"]))
    os.remove(record)
    os.makedirs(record)
    for answer in (client.post("/anneal", json=BODY), client.get(f"/anneal/{job['job_id']}")):
        assert answer.status_code == 500 and answer.json()["error"] == "internal_error"
        _assert_no_server_paths(answer.text, store.root, settings.state_dir)
    shutil.rmtree(record)


def test_the_redactor() -> None:
    redactor = Redactor([("/srv/store", ""), ("/srv/state", "<state_dir>/")], store_label="local store")
    text = redactor.text
    assert text("x '/srv/store/runs/r1/a.json' y") == "x 'runs/r1/a.json' y"
    assert text("at /srv/store: full") == "at <store>: full"
    assert text("/srv/store2/a") == "…/a"  # a sibling is not inside the store
    assert text("sqla+sqlite:////srv/state/broker.sqlite") == "sqla+sqlite:///<state_dir>/broker.sqlite"
    assert text("redis://user:pw@redis:6379/0 down") == "redis://***@redis:6379/0 down"
    assert text("see GET /anneal/{job_id} or /runs/r1/models; 1/2/3 and s3://b/k/x") == (
        "see GET /anneal/{job_id} or /runs/r1/models; 1/2/3 and s3://b/k/x"
    )
    assert text("/usr/lib/python3/x.py, line 3") == "…/x.py, line 3"
    assert (
        text("file:///data/c/x.jsonl sqlite:////var/db/b.sqlite") == "file://…/x.jsonl sqlite:///…/b.sqlite"
    )
    assert text("http://host/a/b and /other/srv/store/x") == "http://host/a/b and …/x"
    assert redactor.json({"a": ["/srv/store/runs/x"], "n": 1}) == {"a": ["runs/x"], "n": 1}


# -- the schema -------------------------------------------------------------------------------
def test_the_schema_documents_the_real_error_answers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text and "ValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for code in ("400", "413", "431", "503"):
                assert code in responses, (method, path, code)
            for code, response in responses.items():
                if code.startswith(("4", "5")) and not (path == "/healthz" and code == "503"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, path, code)
    post = schema["paths"]["/anneal"]["post"]
    assert post["security"] == [{"HTTPBearer": []}, {}]  # the fixture's app has no token: optional
    invalid = client.post("/anneal", json={"window": "80X"})
    assert invalid.status_code == 422 and set(invalid.json()) == {"error", "detail", "choices"}


@given(st.text(alphabet="ab9._-/ :", max_size=12) | st.text(min_size=120, max_size=135, alphabet="a."))
def test_documented_name_patterns_are_the_stores_rule(value: str) -> None:
    def valid(name: str) -> bool:
        try:
            validate_name(name)
            return True
        except ValueError:
            return False

    assert bool(re.fullmatch(NAMED["run"]["pattern"], value)) == valid(value)
    job_ok = valid(value) and valid(f"{value}.json")
    assert bool(re.fullmatch(NAMED["job_id"]["pattern"], value)) == job_ok
    run, _, name = value.partition(":")
    model_ok = ":" in value and valid(run) and valid(name)
    assert bool(re.fullmatch(NAMED["model_id"]["pattern"], value)) == model_ok
