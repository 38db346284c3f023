"""Training metrics: buffered records flushed to the store as JSONL segments, optionally TensorBoard.

Records are flushed with each checkpoint (from the saver thread) and at exit, so the store gets
one segment per checkpoint rather than one per log line; ``flush_every_s`` bounds the delay when
checkpoints are rare.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from wsm.store import Store

log = logging.getLogger(__name__)


class MetricsSink:
    """Thread-safe buffer of metric records for one run (rank 0 only)."""

    def __init__(
        self, store: Store, run: str, *, tensorboard: str | None = None, flush_every_s: float = 120.0
    ) -> None:
        self.store = store
        self.run = run
        self.flush_every_s = flush_every_s
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(tensorboard)
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to the store only")

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            records, self._records = self._records, []
        return records

    def flush(self, records: list[dict[str, Any]] | None = None) -> None:
        """Write ``records`` (default: everything buffered) as one segment."""
        batch = self.take() if records is None else records
        self._last_flush = time.monotonic()
        if batch:
            self.store.append_metrics(self.run, batch)
        if self._tb is not None:
            self._tb.flush()

    def due(self) -> bool:
        return time.monotonic() - self._last_flush > self.flush_every_s

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
