"""Celery's superuser warning as one wsm line: what a worker started as root says about it.

Celery's worker checks its privileges as it starts (``celery.platforms.check_privileges``): as
root (uid or euid 0), in a group that can become root (sudo, wheel), or with a group it cannot
look up, it prints a multi-line ``SecurityWarning`` that tells the user of a ``--uid`` option
``wsm worker`` does not have. Root is the usual case in containers and on a fresh machine, so
:func:`privileges_explained` runs Celery's own check first and says the same once, in one line
that names the wsm remedy, and hides only that warning while the worker runs.

Only advice is hidden. The case Celery refuses outright (a privileged worker that accepts pickle
without ``C_FORCE_ROOT``) still raises its ``SecurityError``: the check runs unchanged, and wsm's
app accepts JSON only (anneal/broker/app.py).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery.exceptions import SecurityWarning
from celery.platforms import check_privileges

log = logging.getLogger("wsm.worker")

# The first words of the warnings check_privileges gives (celery.platforms ROOT_DISCOURAGED,
# ASSUMING_ROOT); the filters below hide these and nothing else.
CELERY_WARNINGS = (
    r"You're running the worker with superuser privileges",
    r"An entry for the specified gid or egid was not found",
)


def _who() -> str:
    if os.getuid() == 0 or os.geteuid() == 0:
        return "as root"
    return f"with group privileges Celery treats as root's (gid {os.getgid()}, egid {os.getegid()})"


@contextmanager
def privileges_explained(accept_content: Sequence[str]) -> Iterator[None]:
    """Around the worker's start: one WARNING line if Celery would warn about superuser privileges,
    and Celery's own multi-line warning hidden. Raises Celery's ``SecurityError`` where it refuses."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", SecurityWarning)
        check_privileges(accept_content)
    if any(issubclass(w.category, SecurityWarning) for w in said):
        log.warning(
            "the worker runs %s: Celery advises an unprivileged user in production; "
            "start wsm as one (e.g. docker run --user 1000:1000)",
            _who(),
        )
    with warnings.catch_warnings():
        for message in CELERY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=SecurityWarning)
        yield
