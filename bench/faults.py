"""The fault suite at scale: many random SIGKILLs and store failures, with counts of what held.

    python bench/faults.py                                  # 3 trials of every kind
    python bench/faults.py --trials 10 --kinds worker,api,redis --seed 7

Kinds (tests/api/faults.py has the trials and the checks): ``worker`` (SIGKILL of a pool child,
idle or busy, or of the main process, at random moments of running jobs; a killed main process is
restarted as a supervisor would), ``api`` (SIGKILL of ``wsm serve`` while clients submit),
``redis`` (SIGKILL of the broker, restarted empty), ``trainer`` (SIGKILL during training and
inside checkpoint uploads, then resume), ``full`` (the store on a tmpfs with room for a few
models) and ``readonly`` (the store's tmpfs remounted read-only while jobs run). Without the right
to mount, ``full`` and ``readonly`` run on the ``quota://`` fsspec stand-in with the runner in
this process (reported as ``full-inprocess``/``readonly-inprocess``).

Every trial checks that nothing partial or corrupt is visible, that no acknowledged job is lost,
and that every failure is recorded with its reason. Prints one line of counts per kind; the
violation columns (lost, unexplained, partial/corrupt, 500s, leftovers) must be 0, and the exit
status is 1 if any is not.
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.api.faults import KINDS, Counts, run_trial  # noqa: E402


def _data_cache(tmp: Path) -> Path:
    """The tiny trainer's corpus and tokenizer, prepared once for every trainer trial."""
    from tests.trainer.conftest import tiny_overrides
    from trainer.config import load_config
    from trainer.data import prepare_data

    cache = tmp / "cache"
    prepare_data(load_config(None, tiny_overrides(cache)).data)
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per kind (default 3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--keep", action="store_true", help="keep the trial directories (logs, stores)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {unknown}; choose from {', '.join(KINDS)}")
    seed = args.seed if args.seed is not None else int(time.time())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="wsm-faults-"))
    print(f"seed {seed}; trial directories under {base}", flush=True)
    cache = _data_cache(base) if "trainer" in kinds else None
    totals: dict[str, Counts] = collections.defaultdict(Counts)
    started = time.monotonic()
    for kind in kinds:
        for i in range(args.trials):
            t0 = time.monotonic()
            ran, counts = run_trial(kind, base / f"{kind}-{i}", rng, cache)
            totals[ran].add(counts)
            status = "ok" if not counts.violations() else f"VIOLATIONS {counts.violations()}"
            print(f"  {ran} trial {i + 1}/{args.trials}: {time.monotonic() - t0:.0f}s {status}", flush=True)
            for note in counts.notes:
                print(f"    {note}", flush=True)
    print(f"\n{len(kinds) * args.trials} trials in {time.monotonic() - started:.0f}s (seed {seed})")
    for kind, counts in totals.items():
        print(counts.line(kind))
    bad = {kind: c.violations() for kind, c in totals.items() if c.violations()}
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
