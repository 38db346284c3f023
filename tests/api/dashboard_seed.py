"""Seed a store with a tiny, realistic-looking run for the dashboard tests.

Everything goes through the public store API (docs/STORE.md), as the trainer, merger and
evaluator would write it: a run manifest, JSONL metrics, checkpoints with small synthetic
safetensors, annealed variants whose c/w come from the real theory code (two at the end, and a
policy's anneals along the run: the frontier), real-decay branches with their steps (one the twin
of a merge, evaluated with two seeds), and evaluations of each plus of the WSO checkpoints around
the end. The metrics are chosen so that the papers' inversion shows: the annealed models have the
lower pre-training loss, the WSO checkpoint the better post-SFT score.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import save

from anneal import jobs, pipeline
from theory import CurveSpec, select_checkpoints
from wsm.store import Store, Window, layout
from wsm.store.manifests import SourceCheckpoint

RUN = "demo"
M = 1_000_000
INTERVAL = 20 * M
CHECKPOINTS = [INTERVAL * i for i in range(1, 11)]  # 20M .. 200M
END = CHECKPOINTS[-1]
PEAK_LR = 3e-4
TOKENS_PER_STEP = 2 * M

# (model name, curve, window, interval) of the seeded anneal variants at END.
VARIANTS = [
    ("anneal-1-sqrt-80M-at-200M", "1-sqrt", 80 * M, 20 * M),
    ("anneal-linear-40M-at-200M", "linear", 40 * M, 20 * M),
]
BASELINE = "baseline-cosine-80M-at-200M"

# The annealed frontier: a policy's anneals (1-sqrt over 40M, every 40M) at each point.
FRONTIER_ENDS = [80 * M, 120 * M, 160 * M, END]
FRONTIER = [(f"anneal-1-sqrt-40M-at-{end // M}M", "1-sqrt", 40 * M, 20 * M, end) for end in FRONTIER_ENDS]
FRONTIER_GAIN = {80 * M: 0.071, 120 * M: 0.003, 160 * M: 0.062, END: 0.058}

# Real-decay twins (wsm train branch) of merges: (name, curve, window, end, pretrain_val_loss per seed).
# The 1-sqrt 80M twin has two seeds (error bars); the 40M one at 120M differs from WSO by less than
# the noise of the neighbouring checkpoints (the flag the comparison must raise).
TWINS = [
    ("baseline-1-sqrt-80M-at-200M", "1-sqrt", 80 * M, END, [3.2445, 3.2485]),
    ("baseline-1-sqrt-40M-at-120M", "1-sqrt", 40 * M, 120 * M, [3.5185]),
]


def val_loss(tokens: int) -> float:
    """The WSO checkpoints' held-out loss: the trainer's val_loss and the evaluations agree on it."""
    smooth = 3.40 + 7.5 * math.exp(-tokens / (25 * M)) + 0.15 * (1 - tokens / END)
    return round(smooth + 0.0015 * math.sin(tokens / (7 * M)), 4)


WSO_EVALUATED = [120 * M, 140 * M, 160 * M, 180 * M, END]
"""WSO checkpoints with an evaluation (what the anneal jobs evaluate beside each merge)."""

# Post-SFT evaluation per model name ("wso" = the plain checkpoint at END). Numbers the browser
# test looks for in the table.
EVAL_METRICS: dict[str, dict[str, float]] = {
    "wso": {
        "pretrain_val_loss": val_loss(END),
        "sft_val_loss": 1.874,
        "task_accuracy": 0.6125,
        "sharpness_pretrain": 41.7,
        "bench/wsm_count/acc": 0.41,
        "bench/wsm_count/acc_stderr": 0.03,
    },
    VARIANTS[0][0]: {
        "pretrain_val_loss": 3.251,
        "sft_val_loss": 1.902,
        "task_accuracy": 0.5875,
        "sharpness_pretrain": 18.3,
        "bench/wsm_count/acc": 0.47,
        "bench/wsm_count/acc_stderr": 0.03,
    },
    VARIANTS[1][0]: {
        "pretrain_val_loss": 3.298,
        "sft_val_loss": 1.889,
        "task_accuracy": 0.6,
        "sharpness_pretrain": 24.9,
    },
    BASELINE: {
        "pretrain_val_loss": 3.244,
        "sft_val_loss": 1.911,
        "task_accuracy": 0.5813,
        "sharpness_pretrain": 16.2,
    },
}


@dataclass
class Seeded:
    """What was written, for assertions."""

    run: str = RUN
    checkpoints: list[int] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)  # name -> ModelManifest
    evals: dict[str, Any] = field(default_factory=dict)  # name -> EvalManifest


def _weights(value: float) -> bytes:
    """A tiny synthetic model file; the value makes each checkpoint's sha256 distinct."""
    return save({"embed.weight": np.full((4, 8), value, dtype=np.float32)})


def _loss(tokens: int) -> float:
    return 3.2 + 7.5 * math.exp(-tokens / (25 * M)) + 0.02 * math.sin(tokens / (3 * M))


def _lr(tokens: int) -> float:
    return PEAK_LR * min(1.0, tokens / (10 * M))  # warmup, then constant: WSO never decays


def seed_metrics(store: Store, run: str = RUN, upto: int = END, step_tokens: int = TOKENS_PER_STEP) -> None:
    """Training records every ``step_tokens`` and a validation loss at every checkpoint."""
    records: list[dict[str, Any]] = []
    for step, tokens in enumerate(range(step_tokens, upto + 1, step_tokens), start=1):
        records.append({"step": step, "tokens": tokens, "loss": _loss(tokens), "lr": _lr(tokens)})
        if tokens % INTERVAL == 0:
            records.append({"step": step, "tokens": tokens, "val_loss": val_loss(tokens)})
    half = len(records) // 2  # two segments, as a running trainer would leave them
    store.append_metrics(run, records[:half])
    store.append_metrics(run, records[half:])


def seed_run(store: Store, run: str = RUN, *, with_checkpoints: bool = True) -> Seeded:
    """The run manifest, its metrics and (optionally) its checkpoints."""
    store.create_run(
        run,
        model={"preset": "tiny", "layers": 2, "hidden": 64},
        data={"corpus": "synthetic"},
        schedule={"kind": "wso", "peak_lr": PEAK_LR, "warmup_tokens": 10 * M, "save_every_tokens": INTERVAL},
        description="tiny seeded run for the dashboard tests",
    )
    seed_metrics(store, run)
    seeded = Seeded(run=run)
    if with_checkpoints:
        for i, tokens in enumerate(CHECKPOINTS):
            with store.publish_checkpoint(run, tokens, step=tokens // TOKENS_PER_STEP) as pub:
                pub.write_bytes(layout.MODEL_FILE, _weights(float(i)))
                pub.update(extra={"lr": _lr(tokens), "loss": _loss(tokens), "val_loss": val_loss(tokens)})
            seeded.checkpoints.append(tokens)
    return seeded


def variant_weights(variant: tuple[str, str, int, int]) -> dict[str, list[float]]:
    """c_j of each merged checkpoint and w_1..w_k of a seeded variant, from the theory code."""
    _, curve, window, interval = variant
    selection = select_checkpoints(CHECKPOINTS, CurveSpec(name=curve), window, interval=interval, end=END)
    return {"c": [float(v) for v in selection.c], "w": [float(v) for v in selection.w]}


def _publish_anneal(
    store: Store, run: str, name: str, curve: str, window: int, interval: int, end: int = END
) -> Any:
    selection = select_checkpoints(CHECKPOINTS, CurveSpec(name=curve), window, interval=interval, end=end)
    sha = {t: store.get_checkpoint(run, t).file(layout.MODEL_FILE).sha256 for t in selection.tokens}
    sources = [
        # The oldest checkpoint has no segment before it: w is 0 there, as the merger writes it.
        SourceCheckpoint(tokens=t, sha256=sha[t], c=float(c), w=float(selection.w[i - 1]) if i else 0.0)
        for i, (t, c) in enumerate(zip(selection.tokens, selection.c, strict=True))
    ]
    spec = CurveSpec(name=curve)
    with store.publish_model(
        run,
        name,
        kind="anneal",
        tokens=selection.window_end,
        dtype="float32",
        curve={**spec.to_dict(), "label": spec.label()},
        window=Window(start_tokens=selection.window_start, end_tokens=selection.window_end),
        sources=sources,
        timings={"read": 0.01, "merge": 0.01, "write": 0.01},
    ) as pub:
        pub.write_bytes(layout.MODEL_FILE, _weights(0.5))
    return pub.manifest


def _publish_decay(store: Store, run: str, name: str, curve: str, window: int, end: int) -> Any:
    """A real-decay branch as trainer/branch.py writes it: forked, decayed, its steps recorded."""
    fork = end - window
    fork_step, steps = fork // TOKENS_PER_STEP, window // TOKENS_PER_STEP
    shape = CurveSpec(name=curve).decay_at([(i + 1) / steps for i in range(steps)])
    losses = [val_loss(fork) - 0.15 * (i + 1) / steps - 0.06 for i in range(steps)]
    with store.publish_model(
        run,
        name,
        kind="baseline",
        tokens=end,
        dtype="float32",
        branch_tokens=fork,
        window=Window(start_tokens=fork, end_tokens=end),
        curve={"name": curve, "min_lr_factor": 0.0},
        config={"fork_step": fork_step, "window_steps": steps, "tokens_per_step": TOKENS_PER_STEP},
        extra={
            "lrs": [PEAK_LR * float(v) for v in shape],
            "loss_steps": [fork_step + i + 1 for i in range(steps)],
            "losses": losses,
            "final_loss": losses[-1],
            "val_loss": losses[-1] + 0.05,
        },
    ) as pub:
        pub.write_bytes(layout.MODEL_FILE, _weights(0.25))
    return pub.manifest


def seed_models(store: Store, seeded: Seeded) -> None:
    """The anneal variants at END, a policy's anneals along the run, and real-decay branches."""
    for name, curve, window, interval in VARIANTS:
        seeded.models[name] = _publish_anneal(store, seeded.run, name, curve, window, interval)
    for name, curve, window, interval, end in FRONTIER:
        seeded.models[name] = _publish_anneal(store, seeded.run, name, curve, window, interval, end)
    seeded.models[BASELINE] = _publish_decay(store, seeded.run, BASELINE, "cosine", 80 * M, END)
    for name, curve, window, end, _ in TWINS:
        seeded.models[name] = _publish_decay(store, seeded.run, name, curve, window, end)


def _eval(
    store: Store, seeded: Seeded, name: str, model_id: str, metrics: dict[str, float], seed: int = 0
) -> None:
    config = {"seed": seed, "run_sft": True}
    with store.publish_eval(
        seeded.run, name, model_id=model_id, metrics=metrics, config=config, seeds=[seed], duration_s=1.0
    ) as pub:
        pass
    seeded.evals[name] = pub.manifest


def seed_evals(store: Store, seeded: Seeded) -> None:
    """Evaluations of every model, of the WSO checkpoints around the end, and twins with two seeds."""
    run = seeded.run
    for tokens in WSO_EVALUATED:
        metrics = (
            EVAL_METRICS["wso"]
            if tokens == END
            else {**EVAL_METRICS["wso"], "pretrain_val_loss": val_loss(tokens)}
        )
        _eval(store, seeded, f"sft-wso-{tokens // M}M", layout.checkpoint_dir(run, tokens), metrics)
    seeded.evals["wso"] = seeded.evals[f"sft-wso-{END // M}M"]
    for name in (*(v[0] for v in VARIANTS), BASELINE):
        _eval(store, seeded, f"sft-{name}", layout.model_dir(run, name), EVAL_METRICS[name])
        seeded.evals[name] = seeded.evals[f"sft-{name}"]
    for name, *_, end in FRONTIER:
        if name in EVAL_METRICS:
            continue
        metrics = {"pretrain_val_loss": round(val_loss(end) - FRONTIER_GAIN[end], 4), "sft_val_loss": 1.9}
        _eval(store, seeded, f"sft-{name}", layout.model_dir(run, name), metrics)
    for name, *_, losses in TWINS:
        for seed, loss in enumerate(losses):
            metrics = {"pretrain_val_loss": loss, "sft_val_loss": 1.91 + 0.002 * seed}
            _eval(store, seeded, f"sft-{name}-s{seed}", layout.model_dir(run, name), metrics, seed)


def seed_all(store: Store, run: str = RUN) -> Seeded:
    """The full picture the dashboard shows: run, metrics, checkpoints, variants, evaluations."""
    seeded = seed_run(store, run)
    seed_models(store, seeded)
    seed_evals(store, seeded)
    return seeded


# Metrics the scripted worker records for every model it merges (distinct from the seeded ones).
WORKER_METRICS = {
    "pretrain_val_loss": 3.287,
    "sft_val_loss": 1.893,
    "task_accuracy": 0.5937,
    "sharpness_pretrain": 21.4,
}


class ScriptedWorker:
    """An enqueuer for browser tests: a thread that walks each job through the stages the page shows.

    The merge itself is real (anneal.pipeline: check sources, plan, merge, publish); the
    orchestration (Celery, locks, heartbeats) and the SFT evaluation are replaced by a script that
    pauses ``step_s`` between updates, so a polling page can see the job progress.
    """

    def __init__(self, store: Store, step_s: float = 0.4) -> None:
        self.store, self.step_s = store, step_s
        self.threads: list[threading.Thread] = []

    def ping(self) -> str:
        return "scripted test worker"

    def enqueue(self, run: str, job_id: str) -> None:
        thread = threading.Thread(target=self._run, args=(run, job_id), daemon=True, name=f"worker-{job_id}")
        self.threads.append(thread)
        thread.start()

    def _run(self, run: str, job_id: str) -> None:
        record = jobs.load(self.store, run, job_id)

        def save(**fields: Any) -> None:
            for key, value in fields.items():
                setattr(record, key, value)
            jobs.save(self.store, record)
            time.sleep(self.step_s)

        try:
            spec = record.spec
            save(state="running", stage="resolving", progress=0.0, message="checking the source checkpoints")
            plan = pipeline.build_plan(self.store, spec)
            for percent in (20.0, 60.0):
                save(stage="merging", progress=percent, message=f"merging {len(spec.tokens)} checkpoints")
            pipeline.merge(self.store, spec, plan)
            save(stage="publishing", progress=100.0, model_published=True, message="model published")
            if spec.evaluate:
                save(stage="evaluating_anneal", progress=50.0, message="SFT evaluation (scripted)")
                target = pipeline.evaluation_targets(spec)["anneal"]
                with self.store.publish_eval(
                    run,
                    f"sft-{spec.model_name}",
                    model_id=target,
                    metrics=WORKER_METRICS,
                    config={"seed": 0, "run_sft": True},
                    seeds=[0],
                ) as pub:
                    pass
                assert pub.manifest is not None
                record.evals["anneal"] = jobs.EvalSummary.of(pub.manifest)
            # What the runner records at the end (its lease bookkeeping is what this script replaces).
            save(state="done", stage="done", progress=100.0, message="done", finished_at=jobs.utcnow())
        except Exception as e:  # the page must show the failure, as with a real worker
            save(state="failed", stage="failed", error=f"{type(e).__name__}: {e}", finished_at=jobs.utcnow())
