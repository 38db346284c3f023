"""Real service processes for integration tests: a Celery worker (`wsm worker`) and redis-server.

Each worker runs in its own session (process group) so a test can SIGKILL the worker and its pool
children at once, as a machine failure would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(settings: Any, **extra: Any) -> dict[str, str]:
    """WSM_* variables that give a subprocess the same store, broker and state dir as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSM_")}
    fields = {
        "store_url": settings.store_url,
        "state_dir": settings.state_dir,
        "broker_url": settings.broker_url,
        "job_heartbeat_s": settings.job_heartbeat_s,
        "job_stale_after_s": settings.job_stale_after_s,
        "recovery_interval_s": settings.recovery_interval_s,
        "merge_split_bytes": settings.merge_split_bytes,
        "merge_parts": settings.merge_parts,
        "merge_throttle_s": settings.merge_throttle_s,
        "store_reserve_bytes": settings.store_reserve_bytes,
        "eval_config": settings.eval_config.model_dump_json(),
        **extra,
    }
    for k, v in fields.items():
        if v is not None:
            env[f"WSM_{k.upper()}"] = str(v)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Worker:
    """``wsm worker`` as a subprocess; its output goes to ``log``."""

    def __init__(
        self, env: dict[str, str], log: Path, queues: str = "merge,eval", concurrency: int = 1
    ) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsm.cli",
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
            ],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """The pool processes: live children of the worker's main process."""
        return children(self.proc.pid)

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """Wait until the worker consumes and its pool is up; returns the pool's pids."""
        wait_for(lambda: " ready." in self.tail(100_000), timeout, "the worker to be ready", self.tail)
        return wait_for(self.children, timeout, "the pool processes", self.tail)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes (its whole process group)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """redis-server on a free loopback port, no persistence; yields its URL, stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(
    check: Callable[[], T | None], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.2)
