"""Graceful stop on SIGTERM/SIGINT: the first signal asks the loop to stop at the next step boundary;
a second one interrupts immediately (an in-flight upload is then abandoned, invisible in the store)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """Installed for the duration of a ``with`` block, on the main thread only."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
