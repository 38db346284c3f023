"""A process that ends with its parent: the initializer of megatron's results-queue manager.

Kept free of torch and megatron imports: the spawned manager process imports this module to run
it, and should stay a small process (see :func:`trainer.dist_checkpoint.install_results_queue`).
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, watch: bool) -> None:
    """Ask the kernel (Linux) to end this process when ``parent`` ends, SIGKILL included."""
    if not watch:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the manager outlives a killed trainer, as megatron's does
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)
