"""Run several wsm processes as one: prefixed logs, orderly shutdown, fail-fast on a crash.

Used by ``wsm up``. Each component is a child process in its own session, so a Ctrl-C in the
terminal reaches only the supervisor, which then stops the children in order (the trainer first,
so it can finish its in-flight checkpoint), escalating to SIGKILL after a grace period; a stopped
child's whole process group ends with it. Secrets given to it (the API token, the S3 secret key)
are masked in every line it relays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger("wsm.up")


@dataclass
class Component:
    """One child process of ``wsm up``."""

    name: str
    """Prefix of its log lines, e.g. ``trainer``."""

    argv: Sequence[str]
    """Command line; usually ``[sys.executable, "-m", "wsm.cli", ...]``."""

    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Extra environment on top of the supervisor's (not in the repr: it may hold secrets)."""

    process: subprocess.Popen[str] | None = None


MASK = "***"


def _pump(
    component: Component, stream: TextIO, out: TextIO, lock: threading.Lock, secrets: Sequence[str]
) -> None:
    for line in stream:
        for secret in secrets:
            line = line.replace(secret, MASK)
        with lock:
            out.write(f"[{component.name:<8}] {line.rstrip(chr(10))}\n")
            out.flush()


class Supervisor:
    """Starts components, relays their output, and stops them all together."""

    def __init__(
        self,
        components: Sequence[Component],
        *,
        grace_seconds: float = 30.0,
        out: TextIO | None = None,
        secrets: Sequence[str | None] = (),
    ):
        self.components = list(components)
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.grace_seconds = grace_seconds
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for component in self.components:
            env = {**os.environ, **component.env, "PYTHONUNBUFFERED": "1"}
            component.process = subprocess.Popen(
                list(component.argv),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            assert component.process.stdout is not None
            thread = threading.Thread(
                target=_pump,
                args=(component, component.process.stdout, self.out, self._lock, self.secrets),
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            log.info("started %s (pid %d)", component.name, component.process.pid)

    def request_stop(self, *_: object) -> None:
        """Signal handler: ask the main loop to shut everything down."""
        self._stop.set()

    def wait(self, on_tick: Callable[[], None] | None = None, poll_seconds: float = 0.5) -> int:
        """Block until a stop is requested or a component exits; then stop all. Returns the exit code."""
        code = 0
        finished: set[str] = set()
        while not self._stop.is_set():
            for component in self.components:
                assert component.process is not None
                status = component.process.poll()
                if status is None or component.name in finished:
                    continue
                finished.add(component.name)
                if status == 0:
                    # A trainer that reached train_tokens is done; the API and workers keep serving.
                    log.info("%s finished", component.name)
                    continue
                log.error("%s exited with code %s; stopping everything", component.name, status)
                code = status if status > 0 else 1
                self._stop.set()
                break
            if len(finished) == len(self.components):
                break
            if on_tick is not None and not self._stop.is_set():
                on_tick()
            self._stop.wait(poll_seconds)
        self.stop()
        return code

    def stop(self) -> None:
        """SIGTERM each live component in order, wait up to the grace period, then SIGKILL its group.

        Only the component's own process gets the SIGTERM: it stops its children itself (Celery's
        warm shutdown ends the pool, the trainer finishes its checkpoint writers first, uvicorn ends
        its server processes). Signalling the whole group would end those children under it, mid
        write, and Celery would log the pool child it lost as an ERROR. Whatever of the group is
        left after the grace period, or after the component exited, is killed.
        """
        for component in self.components:
            process = component.process
            if process is None or process.poll() is not None:
                continue
            log.info("stopping %s", component.name)
            # os.kill, not send_signal: that could reap it, and free the group id killed below.
            os.kill(process.pid, signal.SIGTERM)
            if not _exited(process.pid, self.grace_seconds):
                log.warning("%s did not stop within %.0f s; killing it", component.name, self.grace_seconds)
            # Not yet reaped, the component still holds its pid, so the group id is still its own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + 5
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for child ``pid`` to exit, leaving it unreaped (a zombie)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        delay = min(delay * 2, remaining, 0.05)
        time.sleep(delay)
    return True
