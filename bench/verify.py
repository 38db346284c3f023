"""What end-to-end integrity costs a warm merge: the same merge of store checkpoints with and without checks.

    python bench/verify.py --quick                  # 4 x 0.1 GB, seconds
    python bench/verify.py --count 8 --size-gb 1    # the reference: 8 x 1 GB bf16

Checkpoints are published into a local store (their checksums computed as they are written, as
the trainer's are), then merged in this process, alternating three ways so that page cache, CPU
frequency and neighbours affect each the same:
  none      no checksum verification, NaN/Inf allowed (the engine alone)
  verify    every input byte checked against the checksums of its manifest as it streams
  full      verify + the NaN/Inf check (what a published merge does)
The best of ``--repeat`` runs of each is compared. The target is verify/none <= 1.10; the ratio
is printed, never asserted (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.merge_data import make_checkpoints  # noqa: E402

B = 10**9


def _store_with(directory: str, paths: list[str]) -> Any:
    """A local store holding ``paths`` as checkpoints of run ``bench`` (published once, then reused)."""
    from wsm.store import Store

    store = Store(os.path.join(directory, "store"))
    have = {m.tokens: m for m in store.list_checkpoints("bench")}
    for i, path in enumerate(paths):
        tokens = (i + 1) * B
        m = have.get(tokens)
        if m is not None and m.file("model.safetensors").size == os.path.getsize(path):
            continue
        with store.publish_checkpoint("bench", tokens, overwrite=True) as pub:
            pub.put_file("model.safetensors", path)
    return store


def _merge(plan: Any, out: str, threads: int | None, verify: bool) -> dict[str, Any]:
    from merger.engine import run_shards

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    stats = run_shards(
        plan, range(len(plan.shards)), out, threads=threads, fsync=False, hash_output=False, verify=verify
    )
    return {
        "seconds": time.perf_counter() - t0,
        "verified_bytes": stats.verified_bytes,
        "verified": all(stats.verified_inputs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="checkpoints (default 8)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each checkpoint in GB (default 1)")
    ap.add_argument("--quick", action="store_true", help="4 x 0.1 GB, seconds")
    ap.add_argument("--dir", default="/tmp/wsm-bench-verify", help="checkpoints and store (reused)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way; the best is compared")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.size_gb = 4, 0.1

    from merger.plan import plan_merge
    from merger.store_io import checkpoint_ref

    t = time.perf_counter()
    paths = make_checkpoints(os.path.join(args.dir, "files"), args.count, int(args.size_gb * 1e9))
    store = _store_with(args.dir, paths)
    refs = [checkpoint_ref(store, m) for m in store.list_checkpoints("bench")[: args.count]]
    plan = plan_merge(refs, [1.0 / len(refs)] * len(refs))
    total = plan.bytes_to_read
    print(f"{len(refs)} store checkpoints ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    ways = {
        "none": (replace(plan, allow_nonfinite=True), False),
        "verify": (replace(plan, allow_nonfinite=True), True),
        "full": (plan, True),
    }
    out = os.path.join(args.dir, "out")
    _merge(plan, out, args.threads, True)  # warm the page cache and the code paths
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ways}
    for _ in range(args.repeat):
        for name, (p, verify) in ways.items():
            runs[name].append(_merge(p, out, args.threads, verify))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    assert best["verify"]["verified"] and not best["none"]["verified"]

    print(
        f"\n{len(refs)} x {total / len(refs) / 1e9:.2f} GB, {total / 1e9:.2f} GB read, warm page cache, "
        f"{os.cpu_count()} cores, best of {args.repeat}"
    )
    print(f"{'way':<8}{'seconds':>9}{'GB/s':>8}{'hashed GB':>11}")
    for name, r in best.items():
        print(
            f"{name:<8}{r['seconds']:9.2f}{total / r['seconds'] / 1e9:8.2f}{r['verified_bytes'] / 1e9:11.2f}"
        )
    ratio = best["verify"]["seconds"] / best["none"]["seconds"]
    full = best["full"]["seconds"] / best["none"]["seconds"]
    print(f"verify/none: {ratio:.3f}x time (target <= 1.10)")
    print(f"full/none:   {full:.3f}x time (verification + NaN/Inf check)")
    if args.json:
        print(json.dumps({"bytes": total, "runs": runs, "verify_ratio": ratio, "full_ratio": full}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
