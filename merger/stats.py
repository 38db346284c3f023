"""What a merge cost: time, bytes, throughput and peak memory, sampled while it runs.

RSS counts pages of mmapped inputs that are in the page cache ("RssFile"), which the kernel can
drop at any time; the memory a merge really owns is anonymous ("RssAnon"). We report both: peak
``rss`` and peak ``anon_rss`` (Linux: sampled from /proc/self/status; elsewhere None).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


def anon_rss() -> int | None:
    """Current anonymous resident memory of this process in bytes (Linux only)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemorySampler:
    """Samples RSS and anonymous RSS in a daemon thread; use as a context manager."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_anon: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsm-merge-mem", daemon=True)
        self._proc = psutil.Process()

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        anon = anon_rss()
        if anon is not None:
            self.peak_anon = max(self.peak_anon or 0, anon)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@dataclass
class MergeStats:
    """Result of executing a plan (or a part of one)."""

    seconds: float = 0.0
    bytes_read: int = 0
    """Tensor bytes read from the inputs (headers excluded)."""
    bytes_written: int = 0
    tensors: int = 0
    checkpoints: int = 0
    peak_rss: int = 0
    peak_anon_rss: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``wait_read`` (compute waiting for data), ``compute``, ``write``, ``total``."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """Output files written: name, size, sha256."""
    verified_inputs: list[bool] = field(default_factory=list)
    """Per input (plan order): whether every byte read from it was checked against the checksums
    of its store manifest. False for inputs outside the store (they have none)."""
    verified_bytes: int = 0
    """Bytes hashed to verify inputs (whole blocks, so a little more than ``bytes_read``)."""

    @property
    def gb_read(self) -> float:
        return self.bytes_read / 1e9

    @property
    def gb_per_s(self) -> float:
        return self.gb_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gb_read"] = round(self.gb_read, 6)
        d["gb_per_s"] = round(self.gb_per_s, 3)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> MergeStats:
        """Inverse of :meth:`to_dict` (derived figures are recomputed, not read)."""
        return MergeStats(**{k: v for k, v in d.items() if k in MergeStats.__dataclass_fields__})

    @staticmethod
    def combine(parts: list[MergeStats]) -> MergeStats:
        """Totals of parts run separately: bytes add up, time is the slowest part (they run in parallel)."""
        out = MergeStats(
            seconds=max((p.seconds for p in parts), default=0.0),
            bytes_read=sum(p.bytes_read for p in parts),
            bytes_written=sum(p.bytes_written for p in parts),
            tensors=sum(p.tensors for p in parts),
            checkpoints=max((p.checkpoints for p in parts), default=0),
            peak_rss=max((p.peak_rss for p in parts), default=0),
            peak_anon_rss=max((p.peak_anon_rss or 0 for p in parts), default=0) or None,
        )
        if parts and all(len(p.verified_inputs) == len(parts[0].verified_inputs) for p in parts):
            out.verified_inputs = [all(v) for v in zip(*(p.verified_inputs for p in parts), strict=True)]
        out.verified_bytes = sum(p.verified_bytes for p in parts)
        for p in parts:
            out.files.extend(p.files)
            for k, v in p.timings.items():
                out.timings[k] = max(out.timings.get(k, 0.0), v)
        return out


class Stopwatch:
    """Accumulates seconds per named phase."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - since
        return now
