"""Logging set-up shared by every wsm command: one line per event, prefixed by component."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str | int = "INFO", component: str | None = None) -> None:
    """Configure the root logger once; ``component`` prefixes every line (used by ``wsm up``)."""
    prefix = f"[{component}] " if component else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
