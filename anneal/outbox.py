"""Sending accepted jobs to the broker from one background thread, off the request path.

``POST /anneal`` acknowledges a job once its record is durable in the store; the job record, not
the broker message, is what makes the acceptance safe. The message is then published by this
thread, in order, one at a time. That keeps the broker's latency (a SQLite commit for the
embedded transport, a network round trip for Redis) and its lock contention out of every
request, which is what bounds the API's tail latency under concurrent clients.

What if the message never goes out (the API process dies, or the broker fails just after the
acknowledgement)? The job stays ``queued`` in the store; this thread retries while the process
lives, and every worker's recovery sweep (anneal/runner.py) re-enqueues queued jobs that show no
sign of life for ``WSM_JOB_STALE_AFTER_S``. A duplicate message is harmless: the worker takes the
job's lock and finds it running or finished.

The broker's health is tracked here too, so that a request for a new job gets 503 at once while
the broker is known to be down, instead of an acknowledgement for work that cannot start soon:
every publish refreshes it, and when nothing was published for ``check_s`` a request probes the
broker itself (one ping, then cached).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from anneal.errors import BrokerUnavailable
from anneal.ports import Enqueuer

log = logging.getLogger(__name__)


class Publisher:
    """A FIFO of ``(run, job_id)`` messages drained into ``enqueuer`` by one daemon thread."""

    def __init__(
        self, enqueuer: Callable[[], Enqueuer], *, check_s: float = 5.0, retry_s: float = 1.0
    ) -> None:
        self._enqueuer = enqueuer
        self.check_s = check_s
        self.retry_s = retry_s
        self._pending: collections.deque[tuple[str, str]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_ok = -float("inf")
        self._down: BrokerUnavailable | None = None
        self._down_checked = -float("inf")

    # -- broker health ---------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`BrokerUnavailable` if the broker is down; probe it if its state is stale."""
        now = time.monotonic()
        with self._cond:
            down, down_checked, last_ok = self._down, self._down_checked, self._last_ok
        if down is not None and now - down_checked < self.retry_s:
            raise down
        if down is None and now - last_ok < self.check_s:
            return
        self.probe()

    def probe(self) -> str:
        """Ping the broker now and remember the answer (``/healthz`` and stale checks use this).

        Returns the broker's description; raises :class:`BrokerUnavailable` if it does not answer.
        """
        try:
            detail = self._enqueuer().ping()
        except BrokerUnavailable as e:
            self._mark_down(e)
            raise
        self._mark_up()
        return detail

    def _mark_up(self) -> None:
        with self._cond:
            if self._down is not None:
                log.info("broker is reachable again")
            self._down, self._last_ok = None, time.monotonic()
            self._cond.notify_all()

    def _mark_down(self, error: BrokerUnavailable) -> None:
        with self._cond:
            if self._down is None:
                log.error("broker unavailable: %s", error)
            self._down, self._down_checked = error, time.monotonic()

    # -- publishing ------------------------------------------------------------------------
    def submit(self, run: str, job_id: str) -> None:
        """Queue the merge stage of ``job_id`` for publishing; returns at once."""
        with self._cond:
            self._pending.append((run, job_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="wsm-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                run, job_id = self._pending[0]
            try:
                self._enqueuer().enqueue(run, job_id)
            except BrokerUnavailable as e:
                self._mark_down(e)
                with self._cond:  # the job stays first in line and is retried, in order
                    if not self._closed:
                        self._cond.wait(self.retry_s)
                continue
            except Exception:  # a bug in an enqueuer must not kill the thread; the sweep covers the job
                log.exception("publishing job %s failed; the recovery sweep will re-enqueue it", job_id)
            else:
                self._mark_up()
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()

    @property
    def backlog(self) -> int:
        """Messages accepted but not yet published."""
        with self._cond:
            return len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message submitted so far is published; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is pending (up to ``timeout``), then stop the thread (a later submit restarts it).

        Whatever is still unpublished after ``timeout`` is left to the workers' recovery sweep.
        """
        self.flush(timeout)
        with self._cond:
            self._closed = True
            left = list(self._pending)
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if left:
            log.warning(
                "%d accepted job(s) not yet sent to the broker (%s); they stay queued in the store "
                "and workers' recovery sweep re-enqueues them",
                len(left),
                ", ".join(j for _, j in left),
            )
        if thread is not None:
            thread.join(timeout=1.0)
        with self._cond:
            self._closed = False
