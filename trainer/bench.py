"""The benchmark stage of an evaluation: lm-evaluation-harness on the model's Hugging Face export, offline.

The stored model is exported (``trainer.export.export_hf``, whose logits equal the megatron
model's) into a temporary directory and handed to ``lm_eval.simple_evaluate(model="hf", ...)``
with a ``TaskManager`` over the built-in pack (``trainer.bench_pack``) and the user's include
paths. ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE`` are set for the stage, so a task whose data is
not local fails instead of downloading.

Scores become flat metrics, ``bench/<task>/<metric>`` and ``bench/<task>/<metric>_stderr`` (a
filter other than lm-eval's ``none`` is appended: ``bench/<task>/<metric>_<filter>``), so every
consumer of an evaluation's metrics picks them up. :func:`cache_key` is what the evaluation's cache
key adds: lm-eval's version and the content hashes of the pack and of the include paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import numbers
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from trainer.bench_pack import PACK_TAG, materialise
from wsm.eval_config import INSTALL_HINT, BenchConfig

log = logging.getLogger(__name__)

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class BenchError(ValueError):
    """A benchmark stage that cannot run as configured; the message is one line."""


def lm_eval_version() -> str:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise BenchError(
            f"the benchmark stage needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        ) from None


def include_dirs(cfg: BenchConfig) -> list[Path]:
    """The include paths as directories; a missing one is an error naming it."""
    out = []
    for raw in cfg.include_path:
        p = Path(raw).expanduser()
        if not p.is_dir():
            raise BenchError(f"bench.include_path: {raw} is not a directory of lm-eval task YAML")
        out.append(p.resolve())
    return out


class _AnyTagLoader(yaml.SafeLoader):
    """Safe YAML that reads lm-eval's ``!function`` (and any other) tags as plain values."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _data_files(yaml_path: Path) -> list[Path]:
    """Local files a task YAML names in ``dataset_kwargs`` (its ``data_files``, however nested)."""
    try:
        doc = yaml.load(yaml_path.read_text(), Loader=_AnyTagLoader)  # a SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BenchError(f"{yaml_path}: not a readable task YAML ({str(exc).splitlines()[0]})") from None
    kwargs = doc.get("dataset_kwargs") if isinstance(doc, dict) else None
    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            p = Path(value).expanduser()
            if p.is_file():
                found.append(p.resolve())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    if isinstance(kwargs, dict):
        walk(kwargs.get("data_files"))
    return found


def include_sha256(dirs: list[Path]) -> str | None:
    """sha256 over every file of the include dirs and every data file their YAML names (None: no dirs).

    Editing a task YAML or its JSONL, wherever the JSONL lives, makes a new cache key.
    """
    if not dirs:
        return None
    files: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(d.rglob("*")):
            hidden = any(p.startswith(".") or p == "__pycache__" for p in f.relative_to(d).parts)
            if hidden or not f.is_file():
                continue
            files[str(f)] = f
            if f.suffix in (".yaml", ".yml"):
                files.update({str(x): x for x in _data_files(f)})
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name].read_bytes()
        digest.update(f"{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def cache_key(cfg: BenchConfig, cache_dir: str | Path) -> dict[str, Any]:
    """What the evaluation cache key adds for the stage (its config enters through EvalConfig)."""
    _, pack_sha = materialise(cfg.seed, cfg.pack_items, cache_dir)
    return {
        "lm_eval": lm_eval_version(),
        "pack_sha256": pack_sha,
        "include_sha256": include_sha256(include_dirs(cfg)),
    }


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` for the duration, in the environment and in the
    already-imported hub and datasets modules (they read the variables once, at import)."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    patched = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    saved_attrs = [(mod, name, getattr(mod, name)) for mod, name in patched if hasattr(mod, name)]
    os.environ.update(dict.fromkeys(OFFLINE_ENV, "1"))
    for mod, name, _ in saved_attrs:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved_attrs:
            setattr(mod, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_manager(tasks: list[str], include: list[Path]) -> Any:
    """A TaskManager that knows ``tasks``; lm-eval's own index (thousands of YAML, seconds to build) only
    when a task is not in the pack or the include paths."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=[str(p) for p in include])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BenchError(
            f"bench.tasks: unknown lm-eval task {', '.join(map(repr, unknown))} (not in the built-in pack "
            f"{PACK_TAG!r}, bench.include_path, or lm-eval's tasks)"
        )
    return manager


def _config_sha256(config: Any) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    # Reprs of callables carry memory addresses; the rest of the config is what the task is.
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return hashlib.sha256(text.encode()).hexdigest()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's ``results`` (``{"task": {"acc,none": …, "acc_stderr,none": …}}``) as flat metrics.

    Non-numeric entries (aliases, "N/A" standard errors of a single item) are left out.
    """
    out: dict[str, float] = {}
    for task, entries in results.items():
        for key, value in entries.items():
            metric, sep, filt = key.partition(",")
            number = _finite(value)
            if not sep or number is None:
                continue
            stderr = metric.endswith("_stderr")
            name = metric.removesuffix("_stderr") if stderr else metric
            if filt != "none":
                name = f"{name}_{filt}"
            out[f"bench/{task}/{name}{'_stderr' if stderr else ''}"] = number
    return out


def run_bench(
    store: Any,
    run: str,
    model_dir: str,
    cfg: BenchConfig,
    device: str,
    cache_dir: str | Path,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Export ``model_dir``, run the configured lm-eval tasks offline; ``(metrics, record)``."""
    from trainer.export import export_hf

    version = lm_eval_version()
    include = include_dirs(cfg)
    pack_dir, pack_sha = materialise(cfg.seed, cfg.pack_items, cache_dir)
    start = time.perf_counter()
    with offline(), tempfile.TemporaryDirectory(prefix="wsm-bench-") as tmp:
        import lm_eval

        hf_dir = export_hf(store, run, model_dir, Path(tmp) / "hf", cache_dir=str(cache_dir))
        manager = task_manager(cfg.tasks, [pack_dir, *include])
        log.info("lm-eval %s on %s: %s", version, model_dir, ", ".join(cfg.tasks))
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={hf_dir},dtype=float32",
            tasks=list(cfg.tasks),
            task_manager=manager,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            batch_size=cfg.batch_size,
            device=device,
            apply_chat_template=cfg.apply_chat_template,
            bootstrap_iters=cfg.bootstrap_iters,
            log_samples=False,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    if not results:  # simple_evaluate returns None on non-zero ranks only
        raise BenchError(f"lm-eval returned no results for {model_dir}")
    metrics = flatten(results["results"])
    configs = results.get("configs") or {}
    record = {
        "lm_eval": version,
        "tasks": {
            task: {
                "version": (results.get("versions") or {}).get(task),
                "config_sha256": _config_sha256(configs[task]) if task in configs else None,
                "n_shot": (results.get("n-shot") or {}).get(task),
                "n_samples": (results.get("n-samples") or {}).get(task),
                "higher_is_better": (results.get("higher_is_better") or {}).get(task),
            }
            for task in sorted(results["results"])
        },
        "pack_sha256": pack_sha,
        "include_sha256": include_sha256(include),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return metrics, record
