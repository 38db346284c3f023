"""Logging set-up shared by every wsm command: one line per event, prefixed by component.

wsm's own packages log at the requested level; third-party libraries (megatron's dataset
builders, httpx, botocore...) only from WARNING up unless the level is DEBUG, so their INFO chatter
never buries what wsm says.
"""

from __future__ import annotations

import logging
import sys

FIRST_PARTY = ("wsm", "theory", "merger", "trainer", "anneal", "api", "__main__")
"""Logger name roots that are wsm's own (module loggers are named after their modules)."""


def setup_logging(level: str | int = "INFO", component: str | None = None) -> None:
    """Configure the root logger once; ``component`` prefixes every line (used by ``wsm up``)."""
    prefix = f"[{component}] " if component else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    wanted = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(wanted, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(wanted if wanted <= logging.DEBUG else max(wanted, logging.WARNING))
    for name in FIRST_PARTY:
        logging.getLogger(name).setLevel(wanted)
