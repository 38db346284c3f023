"""Fast checksums of stored files: xxh3_64 of the whole file and of fixed blocks.

sha256 stays the provenance digest (what a merged model's sources cite); xxh3 (tens of GB/s, and
the xxhash package releases the GIL) is what reads are checked against, cheap enough to check
every read that feeds a publish or a resume. Block digests let a reader of byte ranges (a merge's
mmap views or ranged GETs) verify each block as soon as it has all of it, in whatever order its
pieces arrive, and name the bad byte range.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from wsm.store.errors import IntegrityError
from wsm.store.manifests import Checksums, FileEntry

BLOCK_SIZE = 8 * 2**20
"""Default bytes per checksum block: small enough that a ranged read is verified soon, large
enough that a 100 GB file lists about 12k digests (16 hex digits each) in its manifest."""

ReadFn = Callable[[int, int], Any]
"""``read(offset, length)`` -> a bytes-like object: how a verifier fetches what it still lacks."""


def _hex(h: Any) -> str:
    return format(h.intdigest(), "016x")


class ChecksumWriter:
    """Computes :class:`Checksums` of a file from its bytes, fed in order as they are written."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise ValueError(f"checksum block size must be positive, got {block_size}")
        self.block_size = block_size
        self._file = xxhash.xxh3_64()
        self._block = xxhash.xxh3_64()
        self._in_block = 0
        self._digests: list[str] = []

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self._file.update(view)
        while view:
            n = min(len(view), self.block_size - self._in_block)
            self._block.update(view[:n])
            self._in_block += n
            view = view[n:]
            if self._in_block == self.block_size:
                self._digests.append(_hex(self._block))
                self._block.reset()
                self._in_block = 0

    def result(self) -> Checksums:
        digests = list(self._digests)
        if self._in_block:
            digests.append(_hex(self._block))
        return Checksums(xxh3=_hex(self._file), block_size=self.block_size, blocks="".join(digests))


@dataclass
class _Block:
    start: int
    end: int
    pos: int
    """Next offset to hash: bytes before it are in ``hasher``."""
    hasher: Any = field(default_factory=xxhash.xxh3_64)
    pending: dict[int, memoryview] = field(default_factory=dict)
    """Pieces that arrived ahead of ``pos``, by offset."""
    deferred: bool = False
    """Pieces are no longer kept (memory limit): the block is read again by :meth:`BlockVerifier.finish`."""


class BlockVerifier:
    """Checks pieces of one file, read in any order and from any thread, block by block.

    ``feed(offset, data)`` hashes what continues a block in order and keeps pieces that arrive
    early (views of an mmap cost nothing; remote buffers up to ``hold_bytes``, beyond which a
    block is re-read at the end instead). A block is compared with its manifest digest the moment
    it is complete; a mismatch raises :class:`IntegrityError` naming the file and byte range.
    Each byte is checked the first time it is fed.
    """

    def __init__(self, path: str, entry: FileEntry, *, hold_bytes: int | None = None) -> None:
        if entry.checksums is None:
            raise ValueError(f"{path}: its manifest entry has no checksums to verify against")
        self.path = path
        self.size = entry.size
        self.checksums = entry.checksums
        self.block_size = entry.checksums.block_size
        self.hold_bytes = hold_bytes
        self.verified: set[int] = set()
        self._blocks: dict[int, _Block] = {}
        self._held = 0
        self._lock = threading.Lock()

    def block_range(self, index: int) -> tuple[int, int]:
        start = index * self.block_size
        return start, min(self.size, start + self.block_size)

    def blocks_of(self, offset: int, length: int) -> range:
        """Indices of the blocks that bytes ``[offset, offset + length)`` touch."""
        if length <= 0:
            return range(0)
        return range(offset // self.block_size, (offset + length - 1) // self.block_size + 1)

    def feed(self, offset: int, data: Any) -> None:
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise IntegrityError(
                self.path, f"{self.size} bytes", f"a read of bytes {offset}-{offset + len(view) - 1}"
            )
        for index in self.blocks_of(offset, len(view)):
            start, end = self.block_range(index)
            lo, hi = max(start, offset), min(end, offset + len(view))
            self._feed_block(index, lo, view[lo - offset : hi - offset])

    def _feed_block(self, index: int, offset: int, piece: memoryview) -> None:
        with self._lock:
            if index in self.verified:
                return
            block = self._blocks.get(index)
            if block is None:
                start, end = self.block_range(index)
                block = self._blocks[index] = _Block(start, end, start)
            if offset + len(piece) <= block.pos or block.deferred:
                return  # already hashed, or the block will be read again whole
            if offset < block.pos:  # overlaps what is hashed: keep the new part only
                piece, offset = piece[block.pos - offset :], block.pos
            if offset > block.pos:
                if self.hold_bytes is not None and self._held + len(piece) > self.hold_bytes:
                    self._held -= sum(len(p) for p in block.pending.values())
                    block.pending.clear()
                    block.deferred = True
                    return
                block.pending[offset] = piece
                self._held += len(piece)
                return
            block.hasher.update(piece)
            block.pos += len(piece)
            while (nxt := block.pending.pop(block.pos, None)) is not None:
                self._held -= len(nxt)
                block.hasher.update(nxt)
                block.pos += len(nxt)
            if block.pos >= block.end:
                self._complete(index, block)

    def _complete(self, index: int, block: _Block) -> None:
        self._held -= sum(len(p) for p in block.pending.values())
        del self._blocks[index]
        got = _hex(block.hasher)
        want = self.checksums.block(index)
        if got != want:
            raise IntegrityError(self.path, f"xxh3 {want}", f"xxh3 {got}", (block.start, block.end))
        self.verified.add(index)

    def missing(self, blocks: range | list[int]) -> list[tuple[int, int]]:
        """Byte ranges that blocks ``blocks`` still need before they can be checked (in order)."""
        out: list[tuple[int, int]] = []
        with self._lock:
            for index in blocks:
                if index in self.verified:
                    continue
                block = self._blocks.get(index)
                start, end = self.block_range(index)
                if block is None:
                    out.append((start, end))
                    continue
                if block.deferred:
                    out.append((block.pos, end))
                    continue
                pos = block.pos
                for off in sorted(block.pending):
                    if off > pos:
                        out.append((pos, off))
                    pos = max(pos, off + len(block.pending[off]))
                if pos < end:
                    out.append((pos, end))
        return out

    def finish(self, read: ReadFn, blocks: Iterable[int] | None = None) -> None:
        """Check every block that was fed but is not complete yet (or ``blocks``), reading what it lacks."""
        with self._lock:
            started = sorted(self._blocks) if blocks is None else sorted(set(blocks) - self.verified)
        for index in started:
            with self._lock:
                block = self._blocks.get(index)
                if block is not None and block.deferred:  # hash it again from the start
                    block.hasher.reset()
                    block.pos, block.deferred = block.start, False
            for start, end in self.missing([index]):
                self.feed(start, read(start, end - start))
            if index not in self.verified:  # overlapping pieces never lined up: read it whole
                with self._lock:
                    self._blocks.pop(index, None)
                start, end = self.block_range(index)
                self.feed(start, read(start, end - start))


def check_stream_checksums(path: str, entry: FileEntry, chunks: Iterable[Any]) -> int:
    """Hash a whole file read in order (``chunks``: bytes-like pieces) against ``entry``'s checksums.

    Blocks are checked as they complete (so the error names the byte range), then the whole-file
    digest. Returns the bytes read; a short file is the caller's to report (``check_size``).
    """
    assert entry.checksums is not None
    verifier = BlockVerifier(path, entry)
    whole = xxhash.xxh3_64()
    offset = 0
    for chunk in chunks:
        n = memoryview(chunk).nbytes
        if offset + n > entry.size:
            raise IntegrityError(path, f"{entry.size} bytes", f"more than {entry.size} bytes")
        verifier.feed(offset, chunk)
        whole.update(chunk)
        offset += n
    if offset == entry.size and _hex(whole) != entry.checksums.xxh3:
        raise IntegrityError(path, f"xxh3 {entry.checksums.xxh3}", f"xxh3 {_hex(whole)}")
    return offset
