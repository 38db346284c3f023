"""Verifying merge inputs as they stream, against the checksums of their store manifests.

The engine reads tensor slices, not blocks. Each slice it reads is fed to the file's
:class:`~wsm.store.checksums.BlockVerifier` from the reader thread that fetched it (xxh3 releases
the GIL, so hashing overlaps the arithmetic), and a block is checked the moment all of it has been
read. What the engine never reads inside a block it touches (the safetensors header, the edges of
a split merge's part) is read once up front, so no block waits for the end and no input is read
twice. A mismatch is a :class:`~merger.errors.CorruptInputError` naming the file and byte range,
raised before the output can be published.

Inputs from outside the store have no manifest: they are merged unverified, and the merge manifest
says so (``verified: false``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from merger.errors import CorruptInputError
from wsm.store.checksums import BlockVerifier
from wsm.store.errors import IntegrityError

log = logging.getLogger(__name__)

REMOTE_HOLD_BYTES = 64 * 2**20
"""Per remote file, bytes of early pieces kept until their block lines up; beyond it a block is
read again at the end instead (local pieces are mmap views and cost nothing to keep)."""

Key = tuple[int, int]
"""(input index, file index) in the plan."""
ReadFn = Callable[[int, int], Any]


def _merge_intervals(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _holes(covered: list[tuple[int, int]], region: tuple[int, int]) -> list[tuple[int, int]]:
    """Parts of ``region`` not in the sorted, disjoint ``covered`` spans."""
    out, pos = [], region[0]
    for start, end in covered:
        if end <= pos or start >= region[1]:
            continue
        if start > pos:
            out.append((pos, start))
        pos = max(pos, end)
    if pos < region[1]:
        out.append((pos, region[1]))
    return out


def _error(e: IntegrityError) -> CorruptInputError:
    where = f" at bytes {e.byte_range[0]}-{e.byte_range[1] - 1}" if e.byte_range else ""
    return CorruptInputError(
        f"{e.path}{where} does not match its store manifest (expected {e.expected}, got {e.actual}): "
        "the checkpoint is corrupt; nothing was published"
    )


class InputVerifier:
    """Block verifiers for every store file a run of the engine reads, and their bookkeeping."""

    def __init__(
        self,
        files: dict[Key, Any],
        reads: dict[Key, list[tuple[int, int]]],
        readers: dict[Key, ReadFn],
        remote: dict[Key, bool],
    ) -> None:
        """``files``: FileInfo per key; ``reads``: (offset, length) of every slice the run will read."""
        self._read = readers
        self.verifiers: dict[Key, BlockVerifier] = {}
        self._unverified = {i for (i, _), f in files.items() if not f.verifiable}
        if self._unverified:
            log.debug(
                "%d input(s) have no store checksums (files outside the store, or schema 1 manifests): "
                "merged unverified",
                len(self._unverified),
            )
        for key, f in files.items():
            if not f.verifiable:
                continue
            self.verifiers[key] = BlockVerifier(
                f.uri, f.entry, hold_bytes=REMOTE_HOLD_BYTES if remote[key] else None
            )
        work = [(key, v, reads.get(key, [])) for key, v in self.verifiers.items()]
        if len(work) <= 1:
            for job in work:
                self._prefill(*job)
        else:  # one small ranged read per file: concurrent, as the planner reads headers
            with ThreadPoolExecutor(max_workers=min(16, len(work)), thread_name_prefix="wsm-verify") as pool:
                list(pool.map(lambda job: self._prefill(*job), work))

    def _prefill(self, key: Key, verifier: BlockVerifier, reads: list[tuple[int, int]]) -> None:
        covered = _merge_intervals((o, o + n) for o, n in reads)
        touched = sorted({b for o, n in reads for b in verifier.blocks_of(o, n)})
        regions = _merge_intervals(verifier.block_range(b) for b in touched)
        for region in regions:
            for start, end in _holes(covered, region):
                self.feed(key, start, self._read[key](start, end - start))

    def feed(self, key: Key, offset: int, data: Any) -> None:
        verifier = self.verifiers.get(key)
        if verifier is None:
            return
        try:
            verifier.feed(offset, data)
        except IntegrityError as e:
            raise _error(e) from None

    @property
    def verified_bytes(self) -> int:
        """Bytes of the blocks checked so far (whole blocks: a little more than the slices read)."""
        total = 0
        for v in self.verifiers.values():
            for index in list(v.verified):
                start, end = v.block_range(index)
                total += end - start
        return total

    def finish(self) -> None:
        """Check the blocks still open (pieces dropped for memory); raise on any mismatch."""
        for key, verifier in self.verifiers.items():
            try:
                verifier.finish(self._read[key])
            except IntegrityError as e:
                raise _error(e) from None

    def check_now(self, key: Key, offset: int, length: int) -> None:
        """Verify the blocks under ``[offset, offset + length)`` at once, reading what they lack.

        For error paths: a NaN found in a slice may really be a corrupt block that is not complete yet.
        """
        verifier = self.verifiers.get(key)
        if verifier is None:
            return
        try:
            verifier.finish(self._read[key], verifier.blocks_of(offset, length))
        except IntegrityError as e:
            raise _error(e) from None

    def verified_inputs(self, n_inputs: int) -> list[bool]:
        return [i not in self._unverified for i in range(n_inputs)]
