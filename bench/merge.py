"""Benchmark of the merge engine against the read floor, a naive merge and mergekit.

    python bench/merge.py --quick                 # 4 x 100 MB, a few seconds
    python bench/merge.py --count 8 --size-gb 1   # the reference: 8 x 1 GB bf16
    python bench/merge.py --count 8 --size-gb 1 --sweep 2,4,8

Every method runs in its own subprocess (clean peak-memory figures), on warm page cache or, with
--cold, after dropping it (root):
  floor    read every input byte once, in 64 MiB blocks (what no merge can beat)
  ours     merger.plan_merge + execute_merge (no fsync, no input hashing: the engine alone)
  naive    safetensors.torch.load_file every checkpoint, sum in float32, save_file
  cli      the whole `wsm merge a:w ... -o out` command, imports included (--no-hash-inputs)
  mergekit the whole `mergekit-yaml` linear merge, when installed (pip install '.[bench]', or a
           mergekit-yaml on PATH from a separate environment)
Ratios are printed, never asserted: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.merge_data import make_checkpoints  # noqa: E402


def _worker(mode: str, paths: list[str], out: str, threads: int | None) -> dict[str, Any]:
    """Runs in the subprocess: one method, returns seconds, bytes and peak memory."""
    from merger.stats import MemorySampler

    n = len(paths)
    weights = [1.0 / n] * n
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    with MemorySampler(interval=0.01) as mem:
        if mode == "floor":
            buf = bytearray(64 * 2**20)
            view = memoryview(buf)
            for p in paths:
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(view):
                        pass
        elif mode == "ours":
            from merger.engine import execute_merge
            from merger.plan import plan_merge

            plan = plan_merge(paths, weights)
            stats = execute_merge(plan, out, overwrite=True, fsync=False, threads=threads, hash_output=False)
            extra = {"timings": stats.timings}
        elif mode == "naive":
            import torch
            from safetensors.torch import load_file, save_file

            sds = [load_file(p) for p in paths]
            merged = {}
            for name in sds[0]:
                if sds[0][name].is_floating_point():
                    acc = sum(w * sd[name].float() for w, sd in zip(weights, sds, strict=True))
                    assert isinstance(acc, torch.Tensor)
                    merged[name] = acc.to(sds[0][name].dtype)
                else:
                    merged[name] = sds[0][name]
            os.makedirs(out, exist_ok=True)
            save_file(merged, os.path.join(out, "model.safetensors"))
        elif mode == "mergekit":
            extra = _run_mergekit(paths, weights, out)
        elif mode == "cli":
            extra = _run_cli(paths, weights, out)
        else:
            raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    if mode in ("cli", "mergekit"):
        # The work ran in a child: report its peak RSS (anonymous memory is not visible from here).
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        return {"seconds": seconds, "peak_rss": child_peak, "peak_anon_rss": None, **extra}
    return {"seconds": seconds, "peak_rss": mem.peak_rss, "peak_anon_rss": mem.peak_anon, **extra}


def _run_mergekit(paths: list[str], weights: list[float], out: str) -> dict[str, Any]:
    import yaml

    models: list[dict[str, Any]] = []
    for p in paths:  # mergekit wants model directories
        d = os.path.dirname(p)
        models.append({"model": d, "parameters": {"weight": weights[len(models)]}})
    cfg = {
        "merge_method": "linear",
        "models": models,
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    cfg_path = out.rstrip("/") + ".yaml"
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    exe = shutil.which("mergekit-yaml")
    assert exe is not None
    subprocess.run(
        [exe, cfg_path, out, "--lazy-unpickle", "--no-copy-tokenizer", "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {}


def _run_cli(paths: list[str], weights: list[float], out: str) -> dict[str, Any]:
    # The whole command as a user runs it, imports included, like mergekit-yaml above.
    inputs = [f"{p}:{w!r}" for p, w in zip(paths, weights, strict=True)]
    subprocess.run(
        [sys.executable, "-m", "wsm.cli", "merge", *inputs, "-o", out, "--no-progress", "--no-hash-inputs"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {}


def drop_page_cache() -> None:
    """Evict every input from the page cache (Linux, root): the cold-cache measurements."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as e:
        raise SystemExit(f"--cold needs root on Linux to drop the page cache: {e}") from None


def run_mode(
    mode: str, paths: list[str], out: str, threads: int | None, cold: bool = False, script: str = __file__
) -> dict[str, Any]:
    """One method in its own process (``script _worker MODE OUT THREADS PATHS...``, which prints a
    JSON line last), so its peak memory is its own; the output is removed before and after."""
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_page_cache()
    cmd = [sys.executable, script, "_worker", mode, out, str(threads or 0), *paths]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    shutil.rmtree(out, ignore_errors=True)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def _mib(x: int | None) -> str:
    return f"{x / 2**20:8.0f}" if x else "     n/a"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_worker":
        mode, out, threads, *paths = argv[1:]
        print(json.dumps(_worker(mode, paths, out, int(threads) or None)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="checkpoints (default 8)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each checkpoint in GB (default 1)")
    ap.add_argument("--quick", action="store_true", help="4 x 0.1 GB, seconds")
    ap.add_argument("--dir", default="/tmp/wsm-bench-merge", help="where checkpoints are generated (reused)")
    ap.add_argument("--sweep", default=None, help="checkpoint counts for the scaling sweep, e.g. 2,4,8")
    ap.add_argument("--methods", default="floor,ours,cli,naive,mergekit", help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the best is reported")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every run (root)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.size_gb = 4, 0.1
    sweep = [int(x) for x in args.sweep.split(",")] if args.sweep else []
    count = max([args.count, *sweep])
    t = time.perf_counter()
    paths = make_checkpoints(args.dir, count, int(args.size_gb * 1e9))
    print(
        f"checkpoints: {count} x {os.path.getsize(paths[0]) / 1e9:.2f} GB bf16 in {args.dir} "
        f"(ready in {time.perf_counter() - t:.1f} s)",
        file=sys.stderr,
    )
    use = paths[: args.count]
    total = sum(os.path.getsize(p) for p in use)
    out = os.path.join(args.dir, "out")
    results: dict[str, dict[str, Any]] = {}
    methods = args.methods.split(",")
    if not args.cold:
        run_mode("floor", use, out, args.threads)  # warm the page cache
    for mode in methods:
        if mode == "mergekit" and shutil.which("mergekit-yaml") is None:
            print("mergekit: not installed (pip install '.[bench]'), skipped", file=sys.stderr)
            continue
        runs = [run_mode(mode, use, out, args.threads, args.cold) for _ in range(args.repeat)]
        results[mode] = min(runs, key=lambda r: r["seconds"])
    print(
        f"\n{len(use)} x {total / len(use) / 1e9:.2f} GB, {total / 1e9:.2f} GB read, "
        f"{'cold' if args.cold else 'warm'} page cache, "
        f"{os.cpu_count()} cores"
    )
    print(f"{'method':<10}{'seconds':>9}{'GB/s':>8}{'RSS MiB':>9}{'anon MiB':>9}")
    for mode, r in results.items():
        print(
            f"{mode:<10}{r['seconds']:9.2f}{total / r['seconds'] / 1e9:8.2f}{_mib(r['peak_rss'])} {_mib(r['peak_anon_rss'])}"
        )
    if "ours" in results:
        ours = results["ours"]["seconds"]
        for other in ("floor", "naive", "mergekit"):
            if other in results:
                print(f"ours/{other}: {ours / results[other]['seconds']:.2f}x time")
    if "cli" in results and "mergekit" in results:
        whole = results["cli"]["seconds"] / results["mergekit"]["seconds"]
        print(f"whole command, wsm merge / mergekit-yaml: {whole:.2f}x time ({1 / whole:.1f}x faster)")
        print("ours phases (s):", {k: round(v, 2) for k, v in results["ours"].get("timings", {}).items()})
    sweep_rows = []
    if sweep:
        print(f"\nsweep (ours): {'n':>3}{'seconds':>9}{'s/ckpt':>8}{'anon MiB':>9}")
        for n in sweep:
            r = run_mode("ours", paths[:n], out, args.threads)
            sweep_rows.append({"n": n, **r})
            print(f"{'':14}{n:>3}{r['seconds']:9.2f}{r['seconds'] / n:8.2f} {_mib(r['peak_anon_rss'])}")
    if args.json:
        print(json.dumps({"bytes": total, "results": results, "sweep": sweep_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
