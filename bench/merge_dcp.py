"""Benchmark of merging Megatron ``torch_dist`` (PyTorch DCP) checkpoints.

    python bench/merge_dcp.py                                  # 8 x 0.25 GB, a few minutes
    python bench/merge_dcp.py --size-gb 1 --parts 1,2,4        # the reference size, worker curve
    python bench/merge_dcp.py --size-gb 1 --cold               # after dropping the page cache (root)
    python bench/merge_dcp.py --megatron-lm ~/src/Megatron-LM --megatron-python ~/mlm-env/bin/python

Inputs: ``--count`` checkpoints of a bf16 GPTModel (hidden 2048, as many layers as ``--size-gb``
allows) saved by megatron-core's own ``dist_checkpointing.save`` in Megatron-LM's layout
(``iter_<N>/``: ``.metadata``, ``__0_<i>.distcp``, ``common.pt``, ``metadata.json``), model state
only (what weighted_merge.py accepts). Generated once under ``--dir`` and reused, with
safetensors copies of the same tensors (written by wsm's own DCP -> safetensors merge).

Every method runs in its own subprocess (clean peak-memory figures), warm (inputs read once
before) or, with --cold, after dropping the page cache:

  floor       read every byte of the DCP inputs once, in 64 MiB blocks (what no merge can beat)
  dcp         plan_merge + execute_merge, DCP in, torch_dist out (no fsync, no hashing)
  dcp_st      the same, safetensors out
  floor_st    read every byte of the safetensors copies once
  st          wsm's safetensors path: the safetensors copies in, safetensors out
  megatron    python tools/checkpoint/weighted_merge.py --merge-inputs p:w ... (one process), run
              from the --megatron-lm checkout by --megatron-python; its own "total" timing is used
              (imports excluded). It fsyncs its output, so it is compared with
  dcp_sync    dcp with the output fsynced (run with --megatron-lm)
  parts       --parts N,...: the DCP merge split into N parts (plan.split), each part in its own
              process at the same time (cores / N threads each; processes started and imports
              done before the clock starts, as long-lived merge workers), then the final
              metadata-only step

Worker processes import the merger (and torch.distributed.checkpoint) before timing: a merge
worker is long-lived, so imports are not part of a merge's time; planning is.

Throughput is input bytes of the merged tensors per second. Ratios are printed, never asserted:
timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import merge as merge_bench  # noqa: E402
from bench.merge import drop_page_cache  # noqa: E402

HIDDEN, FFN, HEADS, VOCAB, SEQ = 2048, 5632, 16, 32000, 2048
GLOBAL_BATCH = 512
LAYOUT_VERSION = "megatron-gpt-1"  # part of the reuse marker: a new layout regenerates the inputs


def _layers_for(size: int) -> int:
    per_layer = 2 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN)
    return max(1, round((size - 2 * 2 * VOCAB * HIDDEN) / per_layer))


# -- inputs ------------------------------------------------------------------------------------------


def _make(run_dir: str, count: int, size: int) -> None:
    """In a subprocess: save ``count`` iterations of one GPTModel, scaled a little per iteration."""
    import argparse as ap

    import torch
    from megatron.core import dist_checkpointing

    from trainer.config import ModelConfig
    from trainer.dist_checkpoint import cpu_save_support
    from trainer.distributed import init_distributed
    from trainer.model import build_model

    init_distributed(1)
    cfg = ModelConfig(
        preset=None,
        num_layers=_layers_for(size),
        hidden_size=HIDDEN,
        ffn_hidden_size=FFN,
        num_attention_heads=HEADS,
        num_query_groups=HEADS,
        seq_length=SEQ,
    )
    model = build_model(cfg, VOCAB, seed=1, bf16=True)
    args = ap.Namespace(
        num_layers=cfg.num_layers,
        hidden_size=HIDDEN,
        ffn_hidden_size=FFN,
        num_attention_heads=HEADS,
        seq_length=SEQ,
        global_batch_size=GLOBAL_BATCH,
        padded_vocab_size=VOCAB,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        bf16=True,
        ckpt_format="torch_dist",
    )
    for i in range(count):
        iteration = (i + 1) * 1000
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0 + 2**-6)  # distinct values per checkpoint, at no cost
        out = Path(run_dir) / f"iter_{iteration:07d}"
        out.mkdir(parents=True, exist_ok=True)
        state = {
            "model": model.sharded_state_dict(),
            "args": args,
            "iteration": iteration,
            "checkpoint_version": 3.0,
        }
        with cpu_save_support():
            dist_checkpointing.save(state, str(out))
        (Path(run_dir) / "latest_checkpointed_iteration.txt").write_text(str(iteration))
        print(f"saved {out}", file=sys.stderr)


def make_inputs(base: str, count: int, size: int) -> tuple[list[str], list[str]]:
    """The DCP checkpoints (``iter_*`` dirs) and their safetensors copies, made once and reused."""
    run_dir, st_dir = os.path.join(base, "megatron"), os.path.join(base, "safetensors")
    marker = os.path.join(base, "inputs.json")
    want = {"count": count, "size": size, "layout": LAYOUT_VERSION}
    if not (os.path.exists(marker) and json.loads(Path(marker).read_text()) == want):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        cmd = [sys.executable, __file__, "_make", run_dir, str(count), str(size)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        from merger import execute_merge, plan_merge

        for d in sorted(os.listdir(run_dir)):
            if d.startswith("iter_"):
                plan = plan_merge([os.path.join(run_dir, d)], [1.0])
                execute_merge(plan, os.path.join(st_dir, d), fsync=False, hash_output=False)
        Path(marker).write_text(json.dumps(want))
    dcp = sorted(str(p) for p in Path(run_dir).glob("iter_*"))
    st = sorted(str(p / "model.safetensors") for p in Path(st_dir).glob("iter_*"))
    return dcp, st


# -- the methods, each in a subprocess -------------------------------------------------------------------


def _files(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        out += sorted(str(f) for f in Path(p).rglob("*") if f.is_file()) if os.path.isdir(p) else [p]
    return out


def _warm_imports() -> None:
    """What a long-lived merge worker has imported already: not part of a merge's time."""
    import torch.distributed.checkpoint.metadata  # noqa: F401

    import merger.engine
    import merger.formats.dcp_writer  # noqa: F401


def _worker(mode: str, paths: list[str], out: str, threads: int | None) -> dict[str, Any]:
    from merger.stats import MemorySampler

    _warm_imports()
    weights = [1.0 / len(paths)] * len(paths)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    with MemorySampler(interval=0.01) as mem:
        if mode in ("floor", "floor_st"):
            view = memoryview(bytearray(64 * 2**20))
            for f in _files(paths):
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(view):
                        pass
        elif mode in ("dcp", "dcp_sync", "dcp_st", "st"):
            from merger import execute_merge, plan_merge

            out_format = "torch_dist" if mode.startswith("dcp") and mode != "dcp_st" else "safetensors"
            plan = plan_merge(paths, weights, out_format=out_format)
            fsync = mode == "dcp_sync"  # weighted_merge.py syncs its files: compared with this one
            stats = execute_merge(plan, out, overwrite=True, fsync=fsync, threads=threads, hash_output=False)
            extra = {"timings": stats.timings, "bytes": stats.bytes_read}
        else:
            raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss": mem.peak_rss, "peak_anon_rss": mem.peak_anon, **extra}


def run_mode(mode: str, paths: list[str], out: str, threads: int | None, cold: bool) -> dict[str, Any]:
    return merge_bench.run_mode(mode, paths, out, threads, cold, script=__file__)


def _weighted_merge_cmd(checkout: str, python: str) -> list[str]:
    """weighted_merge.py run where it is, by ``python`` (which must import the checkout's
    megatron-core: recent ones need triton, for instance). Never copied into this repository."""
    script = os.path.join(checkout, "tools", "checkpoint", "weighted_merge.py")
    if not os.path.isfile(script):
        raise SystemExit(f"{script}: not found; --megatron-lm must be a Megatron-LM checkout")
    probe = subprocess.run(
        [python, "-c", "import megatron.core.dist_checkpointing"],
        cwd=checkout,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": checkout, "PYTHONWARNINGS": "ignore"},
    )
    if probe.returncode != 0:
        last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "import failed"
        raise SystemExit(
            f"{checkout}: its megatron-core does not import with {python} ({last}); "
            "give --megatron-python, an interpreter where it does"
        )
    return [python, script]


def run_megatron(checkout: str, python: str, paths: list[str], out: str, cold: bool) -> dict[str, Any]:
    cmd = _weighted_merge_cmd(checkout, python)
    weights = [1.0 / len(paths)] * len(paths)
    inputs = [f"{p}:{w!r}" for p, w in zip(paths, weights, strict=True)]
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_page_cache()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    env.setdefault("MASTER_PORT", "29533")
    t0 = time.perf_counter()
    res = subprocess.run(
        [*cmd, "--merge-inputs", *inputs, "--merge-output", out], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if res.returncode != 0:
        raise RuntimeError(f"weighted_merge.py failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    m = re.search(r"total=([0-9.]+)s", res.stdout + res.stderr)
    seconds = float(m.group(1)) if m else wall
    peak = re.search(r"host_peak=([0-9.]+) GiB", res.stdout + res.stderr)
    return {
        "seconds": seconds,
        "wall": wall,
        "peak_rss": int(float(peak.group(1)) * 2**30) if peak else None,
        "peak_anon_rss": None,
    }


def _part(plan_file: str, index: int, count: int, out: str, threads: int) -> dict[str, Any]:
    """One part in its own process: started ahead like a merge worker, then run on a signal."""
    from merger import MergePlan, merge_part

    _warm_imports()
    print("ready", flush=True)
    sys.stdin.readline()
    plan = MergePlan.from_dict(json.loads(Path(plan_file).read_text()))
    stats = merge_part(plan.split(count)[index], out, fsync=False, threads=threads, hash_output=False)
    return stats.to_dict()


def run_parts(paths: list[str], out: str, n: int) -> dict[str, Any]:
    """The merge as ``n`` parts in ``n`` concurrent processes, then the metadata-only final step."""
    from merger import MergeStats, finalize_sharded, plan_merge

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    weights = [1.0 / len(paths)] * len(paths)
    plan = plan_merge(paths, weights, out_format="torch_dist").split(n)[0].plan
    plan_file = os.path.join(out, ".plan.json")
    Path(plan_file).write_text(json.dumps(plan.to_dict()))
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "_part", plan_file, str(i), str(n), out, str(threads)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(len(plan.split(n)))
    ]
    for p in procs:  # every worker up (imports done) before the clock starts
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a part process did not start")
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    stats = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"part failed: {stdout[-2000:]}")
        stats.append(MergeStats.from_dict(json.loads(stdout.strip().splitlines()[-1])))
    t1 = time.perf_counter()
    os.unlink(plan_file)
    finalize_sharded(plan, out, stats, fsync=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {
        "parts": len(procs),
        "threads": threads,
        "seconds": seconds,
        "final_step": time.perf_counter() - t1,
    }


# -- main ----------------------------------------------------------------------------------------------


def _mib(x: int | None) -> str:
    return f"{x / 2**20:9.0f}" if x else "      n/a"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_make":
        _make(argv[1], int(argv[2]), int(argv[3]))
        return 0
    if argv and argv[0] == "_worker":
        mode, out, threads, *paths = argv[1:]
        print(json.dumps(_worker(mode, paths, out, int(threads) or None)))
        return 0
    if argv and argv[0] == "_part":
        print(json.dumps(_part(argv[1], int(argv[2]), int(argv[3]), argv[4], int(argv[5]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="checkpoints (default 8)")
    ap.add_argument("--size-gb", type=float, default=0.25, help="bf16 size of each checkpoint (default 0.25)")
    ap.add_argument("--dir", default="/tmp/wsm-bench-merge-dcp", help="where inputs are generated (reused)")
    ap.add_argument("--methods", default="floor,dcp,dcp_st,floor_st,st", help="comma-separated subset")
    ap.add_argument("--megatron-lm", default=None, help="a Megatron-LM checkout: also run weighted_merge.py")
    ap.add_argument(
        "--megatron-python",
        default=sys.executable,
        help="interpreter for weighted_merge.py, one that imports the checkout's megatron-core",
    )
    ap.add_argument("--parts", default=None, help="merge-worker counts for the split curve, e.g. 1,2,4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the best is reported")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every run (root)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    dcp, st = make_inputs(args.dir, args.count, int(args.size_gb * 1e9))
    from merger import plan_merge

    needed = plan_merge(dcp, [1.0 / len(dcp)] * len(dcp)).bytes_to_read
    print(
        f"inputs: {len(dcp)} x {needed / len(dcp) / 1e9:.2f} GB of bf16 tensors (megatron-core torch_dist, "
        f"safetensors copies) in {args.dir}, ready in {time.perf_counter() - t:.0f} s",
        file=sys.stderr,
    )
    out = os.path.join(args.dir, "out")
    results: dict[str, dict[str, Any]] = {}
    warm_with = {
        "dcp": "floor",
        "dcp_st": "floor",
        "st": "floor_st",
        "floor": "floor",
        "floor_st": "floor_st",
        "dcp_sync": "floor",
    }
    for mode in args.methods.split(","):
        use = st if mode in ("st", "floor_st") else dcp
        if not args.cold:
            run_mode(warm_with[mode], use, out, args.threads, False)  # warm the page cache
        runs = [run_mode(mode, use, out, args.threads, args.cold) for _ in range(args.repeat)]
        results[mode] = min(runs, key=lambda r: r["seconds"])
    if args.megatron_lm:
        for mode in ("dcp_sync", "megatron"):
            if not args.cold:
                run_mode("floor", dcp, out, None, False)
            if mode == "megatron":
                runs = [
                    run_megatron(args.megatron_lm, args.megatron_python, dcp, out, args.cold)
                    for _ in range(args.repeat)
                ]
            else:
                runs = [run_mode(mode, dcp, out, args.threads, args.cold) for _ in range(args.repeat)]
            results[mode] = min(runs, key=lambda r: r["seconds"])

    cache = "cold" if args.cold else "warm"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on the machine skews every figure
    print(
        f"\n{len(dcp)} x {needed / len(dcp) / 1e9:.2f} GB, {needed / 1e9:.2f} GB merged, {cache} page cache, "
        f"{os.cpu_count()} cores, load average {load}"
    )
    print(f"{'method':<10}{'seconds':>9}{'GB/s':>8}{'RSS MiB':>10}{'anon MiB':>10}")
    for mode, r in results.items():
        print(
            f"{mode:<10}{r['seconds']:9.2f}{needed / r['seconds'] / 1e9:8.2f}{_mib(r['peak_rss'])}{_mib(r['peak_anon_rss'])}"
        )
    sec = {m: r["seconds"] for m, r in results.items()}
    if "dcp" in sec and "floor" in sec:
        print(f"dcp / floor: {sec['dcp'] / sec['floor']:.2f}x time (target <= 1.5 warm, ~1 cold)")
    if "dcp_st" in sec and "floor" in sec:
        print(f"dcp_st / floor: {sec['dcp_st'] / sec['floor']:.2f}x time")
    if "dcp" in sec and "st" in sec:
        print(f"dcp / st (same tensors, DCP vs safetensors inputs): {sec['dcp'] / sec['st']:.2f}x time")
    if "megatron" in sec and "dcp_sync" in sec:
        print(
            f"dcp throughput / weighted_merge.py (both syncing their output): "
            f"{sec['megatron'] / sec['dcp_sync']:.1f}x (target >= 5); weighted_merge.py's own total is "
            f"used, its whole command took {results['megatron']['wall']:.1f} s"
        )
    if "dcp" in results:
        print("dcp phases (s):", {k: round(v, 2) for k, v in results["dcp"].get("timings", {}).items()})
    curve = []
    if args.parts:
        print(
            f"\nparts (DCP -> torch_dist, one process per part): {'n':>3}{'threads':>8}{'seconds':>9}{'GB/s':>8}"
            f"{'final s':>9}"
        )
        for n in (int(x) for x in args.parts.split(",")):
            run_mode("floor", dcp, out, None, False) if not args.cold else drop_page_cache()
            r = run_parts(dcp, out, n)
            curve.append(r)
            print(
                f"{'':48}{r['parts']:>3}{r['threads']:>8}{r['seconds']:9.2f}{needed / r['seconds'] / 1e9:8.2f}"
                f"{r['final_step']:9.3f}"
            )
    if args.json:
        print(json.dumps({"bytes": needed, "results": results, "parts": curve}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
