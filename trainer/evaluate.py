"""Evaluation of a stored model or checkpoint: the entry point the service calls.

One evaluation measures, in this order, on the *same* starting weights:

1. ``pretrain_val_loss``: loss on the run's held-out pre-training split, the very sequences the
   trainer validated on (same corpus, tokenizer, seed, sequence length and sample count);
2. ``sharpness_pretrain`` / ``sharpness_sft``: Hessian trace (Hutchinson) of the pre-trained
   weights on pre-training and on held-out SFT data, with ``…_stderr`` (WSO paper, Appendix H);
3. ``sft_val_loss_before``: loss on held-out SFT answers before fine-tuning;
4. SFT (WSO paper, Appendix D; optional LR sweep, best run kept by ``sft.select_metric``), then
   ``sft_val_loss`` and greedy ``task_accuracy`` (macro mean; ``task_accuracy/<task>`` per task);
5. optionally (``bench.enabled``), lm-evaluation-harness tasks on the stored weights' Hugging Face
   export, offline: ``bench/<task>/<metric>`` and ``bench/<task>/<metric>_stderr`` (``trainer.bench``).

The result is an :class:`~wsm.store.EvalManifest` named ``eval-<hash>``, the hash covering the model
dir, the sha256 of its weights, the config and the sha256 of a suite's files: asking again returns
the stored record; with the benchmark stage on, also lm-eval's version and the content hashes of
its task pack and include paths. ``extra["suite"]`` says what the suite lost on the way: records
dropped, by reason, and records or task prompts cut to the model's context; ``extra["bench"]``
records lm-eval's version and each task's version, config sha256 and sample counts.
Everything is seeded and torch runs with deterministic algorithms, so recomputing gives the same numbers
on the same machine type.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch

from trainer import bench
from trainer.config import DataConfig
from trainer.eval_data import Prepared, prepare_eval_data
from trainer.load import StoredModel, build_stored_model, load_weights, resolve
from trainer.sft import fine_tune, sft_loss
from trainer.sft_suite import suite_sha256
from trainer.sharpness import model_sharpness
from trainer.weights import load_full_state_dict, named_parameters
from wsm.eval_config import EvalConfig
from wsm.store import ArtifactExistsError, ArtifactNotFoundError, EvalManifest, Store

log = logging.getLogger(__name__)

# Bump when a change alters the numbers for the same config: old records stop matching.
EVAL_VERSION = 1
Progress = Callable[[str, float], None]


def eval_name(sm: StoredModel, config: EvalConfig) -> str:
    """``eval-<16 hex>`` from the model dir, its weights' sha256, the config and a path suite's content.

    The suite enters by the sha256 of its files, not only by its path: editing a suite file and
    evaluating again computes a new result instead of returning the old one.
    """
    key: dict[str, Any] = {
        "v": EVAL_VERSION,
        "model": sm.model_dir,
        "weights": sm.weight_sha256,
        "config": config.model_dump(mode="json"),
    }
    suite_hash = suite_sha256(config.suite)
    if suite_hash is not None:
        key["suite_sha256"] = suite_hash
    if config.bench.enabled:
        key["bench"] = bench.cache_key(config.bench, DataConfig().cache_dir)
    return "eval-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def find_evaluation(
    store: Store, run: str, model_dir: str, config: EvalConfig | None = None
) -> EvalManifest | None:
    """The stored evaluation of ``model_dir`` with ``config``, or None."""
    sm = resolve(store, run, model_dir)
    try:
        return store.get_eval(run, eval_name(sm, config or EvalConfig()))
    except ArtifactNotFoundError:
        return None


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available")
    return torch.device(
        "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"
    )


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded generators and deterministic kernels for the duration; the previous mode is restored."""
    previous = torch.are_deterministic_algorithms_enabled()
    # cuBLAS is deterministic only with a fixed workspace; read when its first handle is made.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    # warn_only: an op without a deterministic kernel warns instead of failing the evaluation.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


class _Phases:
    """Maps phase-local progress to overall progress for the caller's callback.

    Only the phases the config runs count (and are named): an evaluation without SFT reports
    ``load`` and ``pretrain_loss``, and its progress is spread over those alone.
    """

    WEIGHTS: ClassVar[dict[str, int]] = {
        "load": 1,
        "pretrain_loss": 1,
        "sharpness": 3,
        "sft": 4,
        "tasks": 1,
        "bench": 2,
    }

    def __init__(self, callback: Progress | None, config: EvalConfig | None = None) -> None:
        self.callback = callback
        self.weights = {name: w for name, w in self.WEIGHTS.items() if config is None or runs(config, name)}
        self.total = sum(self.weights.values())
        self.done = 0.0

    def report(self, phase: str, fraction: float) -> None:
        if self.callback is not None and phase in self.weights:
            self.callback(phase, min(1.0, (self.done + self.weights[phase] * fraction) / self.total))

    def finish(self, phase: str) -> None:
        self.report(phase, 1.0)
        self.done += self.weights.get(phase, 0)


def runs(config: EvalConfig, phase: str) -> bool:
    """Whether ``config`` runs ``phase`` (load, pretrain_loss, sharpness, sft, tasks, bench)."""
    return {
        "load": True,
        "pretrain_loss": config.pretrain_loss,
        "sharpness": config.sharpness.enabled and bool(config.sharpness_on),
        "sft": config.run_sft,
        "tasks": config.run_sft,
        "bench": config.bench.enabled,
    }[phase]


def _sweep_progress(phases: _Phases, index: int, runs: int, fraction: float) -> None:
    phases.report("sft", (index + fraction) / runs)


def _sweep_better(metric: str, cand: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    if metric == "task_accuracy" and cand["task_accuracy"] != best["task_accuracy"]:
        return cand["task_accuracy"] > best["task_accuracy"]
    return cand["sft_val_loss"] < best["sft_val_loss"]


def _run_sft(
    model: torch.nn.Module,
    base: dict[str, torch.Tensor],
    data: Prepared,
    cfg: EvalConfig,
    device: torch.device,
    phases: _Phases,
    pretrain_lr: float,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fine-tune at each LR of the sweep from ``base``; metrics of the best run and the sweep's record."""
    lrs = cfg.sft.lr_sweep or [cfg.sft.lr or cfg.sft.lr_factor * pretrain_lr]
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    sweep: list[dict[str, Any]] = []
    for k, lr in enumerate(lrs):
        if k:
            load_full_state_dict(model, base)
        run = fine_tune(
            model,
            data.sft_train,
            cfg.sft,
            lr=lr,
            pad_id=data.pad_id,
            device=device,
            progress=functools.partial(_sweep_progress, phases, k, len(lrs)),
        )
        metrics = {
            "sft_lr": lr,
            "sft_train_loss_last": run.train_losses[-1],
            "sft_val_loss": sft_loss(
                model, data.sft_valid, batch_size=cfg.eval_batch_size, pad_id=data.pad_id, device=device
            ),
        }
        if cfg.sft.select_metric == "task_accuracy" or len(lrs) == 1:
            acc, _ = data.score(model, device, cfg)
            metrics.update(
                {("task_accuracy" if t == "all" else f"task_accuracy/{t}"): v for t, v in acc.items()}
            )
        sweep.append({**metrics, "steps": run.steps, "seconds": round(run.seconds, 3)})
        log.info("sft lr=%g: val loss %.4f", lr, metrics["sft_val_loss"])
        if _sweep_better(cfg.sft.select_metric, metrics, best):
            best = metrics
            if len(lrs) > 1:
                best_state = {n: p.detach().to("cpu", copy=True) for n, p in named_parameters(model).items()}
    phases.finish("sft")
    assert best is not None
    if "task_accuracy" not in best:
        # Loss picked the winner: restore it and score only that one.
        assert best_state is not None
        load_full_state_dict(model, best_state)
        acc, _ = data.score(model, device, cfg)
        best.update({("task_accuracy" if t == "all" else f"task_accuracy/{t}"): v for t, v in acc.items()})
    phases.finish("tasks")
    return best, {"sft_sweep": sweep}


def run_peak_lr(sm: StoredModel) -> float:
    """The run's pre-training peak LR (the default SFT LR scales from it)."""
    schedule = sm.run.schedule
    lr = schedule.get("max_lr") or (schedule.get("optim") or {}).get("lr")
    if not lr:
        raise ValueError(f"run {sm.run.run} records no pre-training LR; set sft.lr explicitly")
    return float(lr)


_PREPARED: collections.OrderedDict[str, Prepared] = collections.OrderedDict()
PREPARED_CACHE = 4
"""Prepared evaluation data kept per process: every model of a run evaluated with one config
shares it (tokenised suite, held-out pre-training sequences), so ``wsm evaluate A B C`` and an eval
worker pay that start-up once, not per model."""


def prepared_data(sm: StoredModel, config: EvalConfig) -> Prepared:
    """:func:`prepare_eval_data` for ``sm``'s run and ``config``, cached (read-only afterwards)."""
    key = json.dumps(
        {
            "run": sm.run.run,
            "created": sm.run.created_at.isoformat(),
            "tokenizer": str(sm.tokenizer_path),
            "seq_length": sm.model_cfg.seq_length,
            "config": config.model_dump(mode="json"),
            "suite": suite_sha256(config.suite),
        },
        sort_keys=True,
    )
    if key in _PREPARED:
        _PREPARED.move_to_end(key)
        log.info("evaluation data of run %s reused", sm.run.run)
        return _PREPARED[key]
    data = prepare_eval_data(sm, config)
    _PREPARED[key] = data
    while len(_PREPARED) > PREPARED_CACHE:
        _PREPARED.popitem(last=False)
    return data


def compute(
    store: Store, sm: StoredModel, config: EvalConfig, progress: Progress | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """All metrics of one evaluation (nothing is stored); returns ``(metrics, extra)``."""
    phases = _Phases(progress, config)
    device = pick_device(config.device)
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    base = load_weights(store, sm.manifest)  # also what each SFT run of a sweep starts from
    model = build_stored_model(store, sm, device, base)
    data = prepared_data(sm, config)
    timings["load"] = time.perf_counter() - t
    phases.finish("load")

    if config.pretrain_loss:
        t = time.perf_counter()
        if data.pretrain_valid:
            metrics["pretrain_val_loss"] = data.pretrain_loss(model, device, config.eval_batch_size)
        timings["pretrain_loss"] = time.perf_counter() - t
    phases.finish("pretrain_loss")

    if config.sharpness.enabled:
        for k, where in enumerate(config.sharpness_on):
            t = time.perf_counter()
            batches = data.sharpness_batches(where, config.sharpness, sm.model_cfg.seq_length)
            if batches:
                est = model_sharpness(model, batches, config.sharpness, device)
                metrics[f"sharpness_{where}"] = est.mean
                metrics[f"sharpness_{where}_stderr"] = est.stderr
            timings[f"sharpness_{where}"] = time.perf_counter() - t
            phases.report("sharpness", (k + 1) / len(config.sharpness_on))
    phases.finish("sharpness")

    if config.run_sft:
        t = time.perf_counter()
        metrics["sft_val_loss_before"] = sft_loss(
            model, data.sft_valid, batch_size=config.eval_batch_size, pad_id=data.pad_id, device=device
        )
        best, extra = _run_sft(model, base, data, config, device, phases, run_peak_lr(sm))
        metrics.update(best)
        timings["sft_and_tasks"] = time.perf_counter() - t
    else:
        extra = {}
        phases.finish("sft")
        phases.finish("tasks")
    extra.update(
        timings_s={k: round(v, 3) for k, v in timings.items()},
        skipped=dict(data.skipped),
        suite={
            "name": data.suite_name,
            "sha256": suite_sha256(config.suite),
            "train": len(data.sft_train),
            "valid": len(data.sft_valid),
            "tasks": len(data.tasks),
            **data.report,
        },
        device=str(device),
        torch=torch.__version__,
    )

    if config.bench.enabled:
        # The benchmarks read the stored weights through their export: free the megatron copies first.
        del model, base, data
        if device.type == "cuda":
            torch.cuda.empty_cache()
        phases.report("bench", 0.0)
        t = time.perf_counter()
        scores, extra["bench"] = bench.run_bench(
            store, sm.run.run, sm.model_dir, config.bench, str(device), DataConfig().cache_dir
        )
        metrics.update(scores)
        timings["bench"] = time.perf_counter() - t
        phases.finish("bench")
    extra["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return metrics, extra


def evaluate_model(
    store: Store,
    run: str,
    model_dir: str,
    config: EvalConfig | None = None,
    *,
    progress: Callable[[str, float], None] | None = None,
    force: bool = False,
) -> EvalManifest:
    """Evaluate the checkpoint or model at ``model_dir`` and store the result; cached per model and config.

    ``progress(phase, fraction)`` is called with the overall fraction done (0..1). ``force``
    recomputes and replaces a stored record.
    """
    config = config or EvalConfig()
    sm = resolve(store, run, model_dir)
    name = eval_name(sm, config)
    if not force:
        with contextlib.suppress(ArtifactNotFoundError):
            cached = store.get_eval(run, name)
            log.info("evaluation %s of %s is stored; reusing it", name, model_dir)
            if progress is not None:
                progress("cached", 1.0)
            return cached
    start = time.perf_counter()
    with deterministic(config.seed):
        metrics, extra = compute(store, sm, config, progress)
    duration = time.perf_counter() - start
    try:
        with store.publish_eval(
            run,
            name,
            model_id=sm.model_dir,
            overwrite=force,
            config=config.model_dump(mode="json"),
            seeds=config.seeds(),
            metrics=metrics,
            duration_s=duration,
            extra=extra,
        ) as pub:
            pub.write_bytes("metrics.json", json.dumps(metrics, indent=1, sort_keys=True).encode())
    except ArtifactExistsError:
        # Another worker finished the same evaluation first; its numbers are the same.
        return store.get_eval(run, name)
    assert pub.manifest is not None
    log.info("evaluation %s of %s stored (%.1fs)", name, model_dir, duration)
    return pub.manifest
