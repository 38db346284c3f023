"""Fault trials on real processes, shared by tests/api/test_faults.py (a few) and bench/faults.py (many).

Each trial runs the service, hurts it at random moments, lets it recover by itself (a pool refills;
a supervisor, here the trial, restarts what was killed), then audits the store:

* **nothing partial or corrupt is visible**: every visible model or checkpoint has its manifest and
  verifies (sizes and sha256), and no staging of a dead writer survives a restart of its component;
* **no acknowledged job is lost**: every job the API answered 202/200 for, and every job record in
  the store, ends ``done`` or ``failed`` (within a generous deadline);
* **every failure is recorded with its reason**: a failed job has a non-empty ``error``; a refused
  request is a 503 naming the cause, never a 500.

Kinds: ``worker`` (SIGKILL of a pool child, idle or busy, or of the main process), ``api`` (SIGKILL
of ``wsm serve``), ``redis`` (SIGKILL of the broker, restarted empty), ``trainer`` (SIGKILL during
training and checkpoint uploads), ``full`` (the store on a tiny tmpfs) and ``readonly`` (the
store's tmpfs remounted read-only while jobs run, then back). The last two need the right to mount
(tests/faultfs.py); without it they run against the ``quota://`` stand-in with the runner in this
process (``full-inprocess``, ``readonly-inprocess``), which checks the same promises on fsspec's
error path rather than the kernel's.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from anneal import jobs, runner
from anneal.broker.enqueue import CeleryEnqueuer
from api.app import create_app
from tests.api.fixtures import make_run
from tests.api.worker import ROOT, Worker, free_port, service_env, wait_for
from tests.conftest import make_settings
from tests.faultfs import QuotaFileSystem, can_mount, quota_url, tmpfs
from wsm.settings import Settings
from wsm.store import Store, layout, owner

RUN = "r1"
CURVES = ("linear", "cosine", "1-sqrt", "exponential", "constant")
WINDOWS = ("20M", "30M", "40M", "50M", "60M", "70M")
REQUESTS = [{"curve": c, "window": w, "evaluate": False} for w in WINDOWS for c in CURVES]
"""Distinct jobs (30): each trial takes the next ones."""

KINDS = ("worker", "api", "redis", "trainer", "full", "readonly")


@dataclass
class Counts:
    """What a set of trials did, and the violations of the three promises (all must stay 0)."""

    trials: int = 0
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    acknowledged: int = 0
    done: int = 0
    failed: int = 0
    refused: int = 0
    checkpoints: int = 0
    lost: int = 0
    unexplained: int = 0
    partial: int = 0
    server_errors: int = 0
    leftovers: int = 0
    notes: list[str] = field(default_factory=list)

    VIOLATIONS = ("lost", "unexplained", "partial", "server_errors", "leftovers")

    def add(self, other: Counts) -> None:
        for name in ("trials", "acknowledged", "done", "failed", "refused", "checkpoints", *self.VIOLATIONS):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kills.update(other.kills)
        self.notes += other.notes

    def violations(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.VIOLATIONS if getattr(self, name)}

    def line(self, kind: str) -> str:
        kills = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items())) or "none"
        return (
            f"{kind:<19} trials {self.trials:>3}  kills [{kills}]  acknowledged {self.acknowledged:>3}  "
            f"done {self.done:>3}  failed {self.failed:>3}  refused(503) {self.refused:>3}  "
            f"checkpoints {self.checkpoints:>3}  | lost {self.lost}  unexplained {self.unexplained}  "
            f"partial/corrupt {self.partial}  500s {self.server_errors}  leftovers {self.leftovers}"
        )


def settings_for(tmp: Path, store_url: str, broker_url: str | None = None, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        store_url=store_url,
        state_dir=str(tmp / "state"),
        broker_url=broker_url,
        job_heartbeat_s=0.3,
        job_stale_after_s=3.0,
        recovery_interval_s=1.0,
        api_token=None,
        api_store_probe_s=0.5,
        api_broker_retry_s=0.2,
        store_reserve_bytes=64 * 1024,
    )
    base.update(kw)
    return make_settings(**base)


# -- auditing ------------------------------------------------------------------------------------
def wait_jobs_end(store: Store, ids: set[str], timeout: float) -> dict[str, jobs.JobRecord | None]:
    """Every record of ``ids`` and every other record of the run, once all have ended (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        records: dict[str, jobs.JobRecord | None] = {r.job_id: r for r in jobs.list_jobs(store, RUN)}
        for job_id in ids:
            records.setdefault(job_id, None)
        if all(r is not None and not r.active for r in records.values()) or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def audit_jobs(store: Store, acknowledged: set[str], counts: Counts, timeout: float = 180) -> None:
    records = wait_jobs_end(store, acknowledged, timeout)
    for job_id, record in records.items():
        if record is None or record.active:
            counts.lost += 1
            counts.notes.append(
                f"lost: {job_id} ({record.state + '/' + record.stage if record else 'no record'})"
            )
        elif record.state == "failed":
            counts.failed += 1
            if not (record.error or "").strip():
                counts.unexplained += 1
                counts.notes.append(f"failed without a reason: {job_id}")
        else:
            counts.done += 1
            try:
                store.verify(store.get_model(RUN, record.spec.model_name))
            except Exception as e:
                counts.partial += 1
                counts.notes.append(f"done job {job_id}: model does not verify: {e}")
    audit_visible(store, counts)


def audit_visible(store: Store, counts: Counts) -> None:
    """Every visible model and checkpoint has its manifest and verifies."""
    for kind, listed in (("models", store.list_models(RUN)), ("checkpoints", store.list_checkpoints(RUN))):
        for manifest in listed:
            try:
                store.verify(manifest)
            except Exception as e:
                counts.partial += 1
                counts.notes.append(f"visible {kind} {manifest.dir} does not verify: {e}")
        if store.is_local:  # a visible directory without its manifest would be a partial artifact
            base = Path(store.root, layout.RUNS, RUN, kind)
            for d in base.iterdir() if base.is_dir() else []:
                if not d.name.startswith(".") and not (d / layout.MANIFEST).exists():
                    counts.partial += 1
                    counts.notes.append(f"visible {kind} dir without manifest: {d.name}")


def dead_leftovers(store: Store, under: str) -> list[str]:
    """Hidden staging under ``under`` whose writer is certainly dead (what a restart must have removed)."""
    out = []
    for path in Path(store.root, under).rglob(".*"):
        who = owner.owner_of(path.name)
        if who is not None and who.is_dead():
            out.append(str(path.relative_to(store.root)))
    return out


# -- processes -------------------------------------------------------------------------------------
class Redis:
    """redis-server on a fixed port that can be SIGKILLed and started again (empty: no persistence)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.tmp = free_port(), tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _connects(self.port), 15, "redis-server to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Api:
    """``wsm serve`` as a process, and a tiny HTTP client for it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "WSM_API_PORT": str(self.port), "WSM_API_HOST": "127.0.0.1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wsm.cli", "serve"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.request("GET", "/healthz")[0] in (200, 503), 60, "the API to answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body); status 0 when the server cannot be reached."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}
        except (OSError, ValueError):
            return 0, {}


def _connects(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def record(counts: Counts, status: int, body: dict[str, Any], acknowledged: set[str]) -> None:
    """Count one POST /anneal answer."""
    if status in (200, 202):
        counts.acknowledged += 1
        acknowledged.add(str(body["job_id"]))
    elif status == 503:
        counts.refused += 1
        if not body.get("detail"):
            counts.unexplained += 1
    elif status >= 500:
        counts.server_errors += 1
        counts.notes.append(f"{status}: {body}")


class Requests:
    """The next distinct job requests of a trial."""

    def __init__(self, rng: random.Random) -> None:
        self._left = list(REQUESTS)
        rng.shuffle(self._left)

    def take(self, n: int) -> list[dict[str, Any]]:
        out, self._left = self._left[:n], self._left[n:]
        return out


@contextlib.contextmanager
def _workers(env: dict[str, str], tmp: Path, concurrency: int = 2) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        started.append(Worker(env, tmp / "worker-0.log", queues="merge", concurrency=concurrency))
        yield started
    finally:
        for w in started:
            w.stop()


def _restart_worker(workers: list[Worker], env: dict[str, str], tmp: Path, concurrency: int = 2) -> None:
    """What a supervisor does when the worker's main process died."""
    workers.append(Worker(env, tmp / f"worker-{len(workers)}.log", queues="merge", concurrency=concurrency))


# -- trials ----------------------------------------------------------------------------------------
def trial_worker(tmp: Path, rng: random.Random, kills: int = 3) -> Counts:
    """SIGKILL random worker processes (pool children idle or busy, or the main one) while jobs run."""
    counts = Counts(trials=1)
    settings = settings_for(tmp, str(tmp / "store"), merge_throttle_s=0.02)
    store = Store(settings.store_url, settings=settings)
    make_run(store, elements=1 << 15)
    env = service_env(settings)
    acknowledged: set[str] = set()
    with _workers(env, tmp) as workers:
        workers[-1].wait_ready()
        client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
        for body in Requests(rng).take(4):
            r = client.post("/anneal", json=body)
            record(counts, r.status_code, r.json(), acknowledged)
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 4.0))
            worker = workers[-1]
            pool = wait_for(worker.children, 60, "the pool processes")  # a killed child's replacement too
            if rng.random() < 0.75:
                os.kill(rng.choice(pool), signal.SIGKILL)
                counts.kills["pool child"] += 1
            else:
                os.kill(worker.pid, signal.SIGKILL)
                worker.proc.wait(10)
                counts.kills["worker main"] += 1
                time.sleep(rng.uniform(0.0, 1.0))
                _restart_worker(workers, env, tmp)
                workers[-1].wait_ready()
        audit_jobs(store, acknowledged, counts)
        counts.leftovers += len(dead_leftovers(store, f"{layout.RUNS}/{RUN}/{layout.MODELS}"))
    return counts


def trial_api(tmp: Path, rng: random.Random, kills: int = 2) -> Counts:
    """SIGKILL ``wsm serve`` at random moments while clients submit jobs; a supervisor restarts it."""
    counts = Counts(trials=1)
    settings = settings_for(tmp, str(tmp / "store"))
    store = Store(settings.store_url, settings=settings)
    make_run(store)
    env = service_env(settings, api_broker_retry_s=0.2, api_store_probe_s=0.5)
    acknowledged: set[str] = set()
    requests = Requests(rng)
    api = Api(env, tmp / "api.log")
    with _workers(env, tmp):
        api.start()
        try:
            for _ in range(kills):
                stop = threading.Event()
                client = threading.Thread(
                    target=_post_all, args=(api, requests.take(5), stop, counts, acknowledged)
                )
                client.start()
                time.sleep(rng.uniform(0.05, 1.5))
                api.kill()
                counts.kills["api"] += 1
                stop.set()
                client.join(30)
                api.start()  # the supervisor's restart
            for body in requests.take(2):  # and the restarted API takes new jobs
                status, answer = api.request("POST", "/anneal", body)
                record(counts, status, answer, acknowledged)
            audit_jobs(store, acknowledged, counts)
        finally:
            api.kill()
    return counts


def _post_all(
    api: Api, bodies: list[dict[str, Any]], stop: threading.Event, counts: Counts, acknowledged: set[str]
) -> None:
    for body in bodies:
        if stop.is_set():
            return
        status, answer = api.request("POST", "/anneal", body)
        record(counts, status, answer, acknowledged)


def trial_redis(tmp: Path, rng: random.Random, kills: int = 2) -> Counts:
    """SIGKILL the Redis broker while jobs are queued and running; it comes back empty."""
    counts = Counts(trials=1)
    redis = Redis(tmp)
    redis.start()
    try:
        settings = settings_for(tmp, str(tmp / "store"), broker_url=redis.url, merge_throttle_s=0.02)
        store = Store(settings.store_url, settings=settings)
        make_run(store, elements=1 << 14)
        env = service_env(settings)
        acknowledged: set[str] = set()
        requests = Requests(rng)
        enqueuer = CeleryEnqueuer(settings)
        with _workers(env, tmp) as workers, contextlib.closing(enqueuer):
            workers[-1].wait_ready()
            client = TestClient(create_app(settings, store=store, enqueuer=enqueuer))
            for _ in range(kills):
                for body in requests.take(3):
                    r = client.post("/anneal", json=body)
                    record(counts, r.status_code, r.json(), acknowledged)
                time.sleep(rng.uniform(0.1, 3.0))
                redis.kill()
                counts.kills["redis"] += 1
                for body in requests.take(1):  # while it is down: 503 or accepted, never lost
                    r = client.post("/anneal", json=body)
                    record(counts, r.status_code, r.json(), acknowledged)
                time.sleep(rng.uniform(0.0, 2.0))
                redis.start()
            audit_jobs(store, acknowledged, counts)
    finally:
        redis.kill()
    return counts


def trial_trainer(tmp: Path, rng: random.Random, cache: Path, kills: int = 2) -> Counts:
    """SIGKILL the trainer during training and inside checkpoint uploads; each restart resumes."""
    from tests.trainer.conftest import tiny_overrides

    counts = Counts(trials=1)
    store_dir = tmp / "store"
    store = Store(str(store_dir), settings=make_settings())
    args = tiny_overrides(cache, run=RUN, store=str(store_dir), train_tokens=str(2560 * (kills + 3)))
    argv = [sys.executable, "-m", "wsm.cli", "train", *[a for s in args for a in ("--set", s)]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    ckpts = f"{layout.RUNS}/{RUN}/{layout.CHECKPOINTS}"
    seen: set[int] = set()
    for attempt in range(kills + 1):
        last = attempt == kills
        delay = "" if last else f"{rng.uniform(0.5, 3.0):.2f}:0"  # stretch every upload: kills land inside
        log = tmp / f"trainer-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env={**env, "WSM_TRAINER_TEST_UPLOAD_DELAY": delay},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # A restart removes its killed predecessor's staging at start-up, before training.
            if attempt:
                wait_for(functools.partial(_trainer_started, log, proc), 300, "the trainer to start")
                counts.leftovers += len(dead_leftovers(store, ckpts))
            if last:
                if proc.wait(600) != 0:
                    counts.notes.append(f"trainer exited {proc.returncode}: {log.read_text()[-500:]}")
                    counts.lost += 1
                break
            # Kill once it has published one more checkpoint (or is inside an upload), at a random moment.
            wait_for(
                functools.partial(_published, store, len(seen) + 1, proc),
                300,
                "the trainer to publish a checkpoint",
            )
            time.sleep(rng.uniform(0.0, 2.5))
        finally:
            if proc.poll() is None:
                proc.kill()
                counts.kills["trainer"] += 1
            proc.wait(30)
        now = {c.tokens for c in store.list_checkpoints(RUN)}
        if not seen <= now:
            counts.lost += len(seen - now)
            counts.notes.append(f"checkpoints disappeared: {sorted(seen - now)}")
        seen |= now
        audit_visible(store, counts)
    counts.checkpoints = len(store.list_checkpoints(RUN))
    audit_visible(store, counts)
    return counts


def _trainer_started(log: Path, proc: subprocess.Popen[bytes]) -> bool:
    return "model:" in log.read_text(errors="replace") or proc.poll() is not None


def _published(store: Store, count: int, proc: subprocess.Popen[bytes]) -> bool:
    return len(store.list_checkpoints(RUN)) >= count or proc.poll() is not None


def trial_full(tmp: Path, rng: random.Random) -> Counts:
    """The store on a tmpfs barely bigger than its checkpoints: merges and records run out of space."""
    counts = Counts(trials=1)
    with tmpfs(tmp / "mnt", 64 * 1024 * 1024) as mount:
        settings = settings_for(tmp, str(mount.path / "store"))
        store = Store(settings.store_url, settings=settings)
        make_run(store, elements=1 << 14)  # 10 checkpoints of ~260 kB; each model needs as much
        mount.resize(mount.used() + rng.randrange(40_000, 1_200_000))  # room for a few models at most
        env = service_env(settings)
        acknowledged: set[str] = set()
        with _workers(env, tmp) as workers:
            workers[-1].wait_ready()
            client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
            for body in Requests(rng).take(10):
                r = client.post("/anneal", json=body)
                record(counts, r.status_code, r.json(), acknowledged)
                time.sleep(rng.uniform(0.0, 0.5))
            audit_jobs(store, acknowledged, counts)
            counts.leftovers += len(dead_leftovers(store, layout.RUNS))
    return counts


def trial_readonly(tmp: Path, rng: random.Random) -> Counts:
    """The store's tmpfs turns read-only while jobs run, then writable again."""
    counts = Counts(trials=1)
    with tmpfs(tmp / "mnt", 64 * 1024 * 1024) as mount:
        settings = settings_for(tmp, str(mount.path / "store"))
        store = Store(settings.store_url, settings=settings)
        make_run(store, elements=1 << 14)
        env = service_env(settings)
        acknowledged: set[str] = set()
        requests = Requests(rng)
        with _workers(env, tmp) as workers:
            workers[-1].wait_ready()
            client = TestClient(create_app(settings, store=store, enqueuer=CeleryEnqueuer(settings)))
            for body in requests.take(4):
                r = client.post("/anneal", json=body)
                record(counts, r.status_code, r.json(), acknowledged)
            time.sleep(rng.uniform(0.0, 2.0))
            # A tmpfs refuses to turn read-only while a file is open for writing: retry between writes.
            wait_for(lambda: _try(mount.read_only), 60, "a moment without open writes")
            counts.kills["read-only"] += 1
            try:
                time.sleep(settings.api_store_probe_s + 0.1)
                for body in requests.take(2):
                    r = client.post("/anneal", json=body)
                    record(counts, r.status_code, r.json(), acknowledged)
                    if r.status_code != 503:
                        counts.notes.append(f"read-only store answered {r.status_code}")
                time.sleep(rng.uniform(0.5, 6.0))
            finally:
                mount.read_only(False)
            audit_jobs(store, acknowledged, counts)
    return counts


def _try(action: Callable[[], Any]) -> bool:
    try:
        action()
        return True
    except RuntimeError:
        return False


# -- the FUSE-free stand-ins (no right to mount): runner in this process on quota:// ---------------
class _InProcessWorker:
    """Runs each job the API publishes through the runner in this process (what a worker would do)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, run: str, job_id: str) -> None:
        self.sent.append((run, job_id))

    def ping(self) -> str:
        return "in-process"

    def drain(self, deadline_s: float = 60) -> None:
        dispatch = runner.Dispatch(evaluate=lambda r, j: None, split=lambda *a: None)
        deadline = time.monotonic() + deadline_s
        while self.sent and time.monotonic() < deadline:
            run, job_id = self.sent.pop(0)
            try:
                runner.anneal(self.store, self.settings, "", run, job_id, dispatch)
            except Exception:  # refused claims (store unwritable): the job waits for the next message
                self.sent.append((run, job_id))
                time.sleep(0.2)


def trial_inprocess(tmp: Path, rng: random.Random, mode: str) -> Counts:
    """``full``/``readonly`` on the quota:// stand-in, the runner in this process."""
    counts = Counts(trials=1)
    QuotaFileSystem.reset()
    settings = settings_for(tmp, quota_url(), job_stale_after_s=1.0)
    store = Store(settings.store_url, settings=settings)
    make_run(store, elements=1 << 14)
    worker = _InProcessWorker(store, settings)
    app = create_app(settings, store=store, enqueuer=worker)
    client = TestClient(app)
    acknowledged: set[str] = set()
    fs: Any = store.fs
    if mode == "full":
        QuotaFileSystem.quota_bytes = fs.used() + rng.randrange(300_000, 900_000)
    for i, body in enumerate(Requests(rng).take(8)):
        if mode == "readonly" and i == 4:
            QuotaFileSystem.read_only = True
            counts.kills["read-only"] += 1
        r = client.post("/anneal", json=body)
        record(counts, r.status_code, r.json(), acknowledged)
        assert app.state.publisher.flush(10)
        worker.drain(5)
    QuotaFileSystem.read_only = False
    app.state.publisher.flush(10)
    worker.drain()
    audit_jobs(store, acknowledged, counts, timeout=5)
    QuotaFileSystem.reset()
    return counts


def run_trial(
    kind: str,
    tmp: Path,
    rng: random.Random,
    cache: Path | None = None,
    *,
    kills: int | None = None,
    mount: bool | None = None,
) -> tuple[str, Counts]:
    """One trial of ``kind`` in ``tmp`` (emptied first); returns the kind actually run and its counts.

    ``kills``: how many SIGKILLs (kill kinds; default per kind). ``mount``: False runs ``full`` and
    ``readonly`` on the in-process ``quota://`` stand-in even where a tmpfs could be mounted.
    """
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    more: dict[str, Any] = {} if kills is None else {"kills": kills}
    if kind in ("full", "readonly") and not (can_mount() if mount is None else mount):
        return f"{kind}-inprocess", trial_inprocess(tmp, rng, kind)
    if kind == "worker":
        return kind, trial_worker(tmp, rng, **more)
    if kind == "api":
        return kind, trial_api(tmp, rng, **more)
    if kind == "redis":
        return kind, trial_redis(tmp, rng, **more)
    if kind == "trainer":
        assert cache is not None, "the trainer trial needs a prepared data cache"
        return kind, trial_trainer(tmp, rng, cache, **more)
    if kind == "full":
        return kind, trial_full(tmp, rng)
    if kind == "readonly":
        return kind, trial_readonly(tmp, rng)
    raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(KINDS)}")
