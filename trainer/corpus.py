"""The built-in corpus: the Python standard library's source files, docstrings included (no download).

Every machine that runs wsm has it, so the embedded default trains on real, varied English+code
text without network access. Contents: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``
except ``site-packages``/``dist-packages``, test suites (``test``, ``tests``, ``idle_test``) and
``__pycache__``; one document per file, in sorted order of the path relative to the stdlib root,
decoded as UTF-8 (invalid bytes replaced). On CPython 3.11.7 that is 731 files and 12.1 MB of
text (3.5M tokens with the 4k BPE of the packaged demo config); ``pydoc_data/topics.py`` alone adds the language reference.
The exact content depends on the Python version, so caches are keyed by a hash of the text.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
BUILTIN_NAMES = ("stdlib",)
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The corpus files in their fixed order (sorted relative POSIX paths)."""
    base = root or stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def iter_stdlib_documents(max_bytes: int | None = None) -> Iterator[str]:
    """One document per stdlib file; stops once ``max_bytes`` of UTF-8 text have been yielded."""
    total = 0
    for path in stdlib_files():
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue
        if not text.strip():
            continue
        if max_bytes is not None and total >= max_bytes:
            return
        total += len(text.encode("utf-8"))
        yield text


def iter_builtin(name: str, max_bytes: int | None = None) -> Iterator[str]:
    """Documents of a built-in corpus by name (``stdlib``)."""
    if name != "stdlib":
        raise ValueError(f"unknown built-in corpus {name!r}; available: {', '.join(BUILTIN_NAMES)}")
    return iter_stdlib_documents(max_bytes)
