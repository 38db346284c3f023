"""A writer thread, so that appending (and hashing) output overlaps with the arithmetic.

The main thread queues commands (open an output file, append a slice of one of its records,
commit it); the queue is bounded, so at most a few finished slices wait in memory. The file's
format (:mod:`merger.formats.output`) decides what goes around the records; every byte it writes
passes through a hashing sink. An error in the thread is re-raised in the main thread at its next
call, and :meth:`WriteThread.abort` deletes every temporary file.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from merger.formats.output import FileWriter
from merger.writer import LocalFileSink, Sink

SinkFactory = Callable[[str], Sink]
"""Opens the sink for an output file name (local temp file, store publisher stream)."""
WriterFactory = Callable[[Sink], FileWriter]
"""Opens an output format's writer for one file over a sink."""


class _HashingSink:
    """Forwards to a sink, counting and (optionally) hashing every byte on the way."""

    def __init__(self, sink: Sink, hashed: bool) -> None:
        self.sink = sink
        self.size = 0
        self.sha = hashlib.sha256() if hashed else None

    def write(self, data: memoryview) -> int | None:
        n = self.sink.write(data)
        done = memoryview(data).nbytes if n is None else n
        if self.sha is not None:
            self.sha.update(memoryview(data)[:done])
        self.size += done
        return done

    def commit(self) -> None:
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


QUEUE_DEPTH = 3


class WriteThread:
    def __init__(
        self,
        output_dir: str | None,
        *,
        fsync: bool = True,
        hash_output: bool = True,
        open_sink: SinkFactory | None = None,
    ) -> None:
        self.output_dir = output_dir
        if open_sink is None:
            if output_dir is None:
                raise ValueError("WriteThread needs an output directory or a sink factory")
            directory = output_dir

            def open_sink(name: str) -> Sink:
                return LocalFileSink(os.path.join(directory, name), fsync=fsync)

        self.open_sink = open_sink
        self.hash_output = hash_output
        self.seconds = 0.0
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._writers: dict[int, tuple[FileWriter, _HashingSink]] = {}
        self._files: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wsm-write", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[Any, ...] | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def open(self, shard: int, filename: str, factory: WriterFactory) -> None:
        self._put(("open", shard, filename, factory))

    def write(self, shard: int, record: int, data: torch.Tensor | bytes, first: bool, last: bool) -> None:
        self._put(("write", shard, record, data, first, last))

    def commit(self, shard: int) -> None:
        self._put(("commit", shard))

    def finish(self) -> list[dict[str, Any]]:
        """Wait for every queued write; return the files written (name, size, sha256)."""
        self._put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return sorted(self._files, key=lambda f: str(f["name"]))

    def abort(self) -> None:
        """Stop the thread and delete temporaries; committed files of this call are removed too."""
        if self._thread.is_alive():
            # Drain so a blocked put cannot deadlock, then stop.
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._queue.put(None)
            self._thread.join()
        for w, _ in self._writers.values():
            w.abort()
        if self.output_dir is not None:
            for f in self._files:
                path = os.path.join(self.output_dir, f["name"])
                if os.path.exists(path):
                    os.unlink(path)

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                t = time.perf_counter()
                self._handle(item)
                self.seconds += time.perf_counter() - t
        except BaseException as exc:
            self._error = exc
            # Keep consuming so producers blocked on put() see the error instead of hanging.
            while self._queue.get() is not None:
                pass

    def _handle(self, item: tuple[Any, ...]) -> None:
        op, shard = item[0], item[1]
        if op == "open":
            _, _, filename, factory = item
            sink = _HashingSink(self.open_sink(filename), self.hash_output)
            self._writers[shard] = (factory(sink), sink)
        elif op == "write":
            _, _, record, data, first, last = item
            if isinstance(data, torch.Tensor):
                data = data.view(torch.uint8).numpy() if data.numel() else b""
            self._writers[shard][0].write_record(record, memoryview(data), first=first, last=last)
        elif op == "commit":
            w, sink = self._writers.pop(shard)
            w.commit()
            digest = sink.sha.hexdigest() if sink.sha is not None else None
            self._files.append({"name": w.name, "size": sink.size, "sha256": digest})
