"""What an evaluation computes: the typed contract between the anneal jobs and the evaluator.

Torch-free on purpose: the API validates ``WSM_EVAL_CONFIG`` against :class:`EvalConfig` at
start-up, and job specs carry it, without importing the trainer. The trainer's evaluator
(``trainer.evaluate``) implements it; every field enters the evaluation's cache key.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INSTALL_HINT = "pip install 'wsm[eval]'"


class SFTConfig(BaseModel):
    """Fine-tuning hyperparameters; defaults are WSO paper Appendix D except batch size and warmup."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    lr: float | None = Field(None, gt=0)
    """Peak learning rate when ``lr_sweep`` is empty; None: ``lr_factor`` × the run's pre-training peak LR."""

    lr_factor: float = Field(0.5, gt=0)
    """Default SFT LR as a fraction of the pre-training peak LR (scales from toy models to 8B)."""

    lr_sweep: list[float] = Field(default_factory=list)
    """Learning rates to try, each from the same starting weights; the best by ``select_metric`` is kept."""

    select_metric: Literal["sft_val_loss", "task_accuracy"] = "sft_val_loss"
    """Metric that picks the sweep's winner (loss: lowest wins; accuracy: highest wins, loss breaks ties)."""

    batch_size: int = Field(16, ge=1)
    """Conversations per optimizer step (paper: 128)."""

    epochs: int = Field(1, ge=1)
    """Passes over the training records (paper: 1)."""

    warmup_steps: int | None = Field(None, ge=0)
    """Linear warmup in optimizer steps (paper: 100); None uses ``warmup_fraction`` of all steps."""

    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    """Warmup as a fraction of all steps when ``warmup_steps`` is None."""

    min_lr: float = Field(0.0, ge=0)
    """LR at the end of the cosine decay (paper: 0)."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (paper: 0)."""

    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""

    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW beta2."""

    clip_grad: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (paper: 1.0; 0 disables)."""

    max_seq_length: int | None = Field(None, ge=8)
    """Truncate conversations to this many tokens; None uses the model's sequence length."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on GPU (paper), fp32 on CPU (megatron's CPU backward fails under bf16)."""

    seed: int = 0
    """Seed of the data order (SFT is otherwise deterministic)."""


class SharpnessConfig(BaseModel):
    """Hutchinson settings; the defaults are the WSO paper's Table 23 where the paper gives one."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Compute sharpness at all (it dominates evaluation time on large models)."""

    samples: int = Field(50, ge=2)
    """Rademacher vectors per batch (paper: 50 Hutchinson samples)."""

    seq_length: int = Field(1024, ge=8)
    """Tokens per sequence (paper: 1,024); capped at the model's sequence length."""

    batch_size: int = Field(1, ge=1)
    """Sequences per batch (paper: 1)."""

    batches: int = Field(1, ge=1)
    """Batches to average over (paper: up to 4,096); the cost is linear in batches × samples."""

    seed: int = 0
    """Seed of the Rademacher vectors and of which held-out sequences are used."""


class BenchConfig(BaseModel):
    """lm-evaluation-harness benchmarks, run offline on the model's Hugging Face export (``wsm[eval]``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Run the benchmark stage (needs lm-evaluation-harness: ``pip install 'wsm[eval]'``)."""

    tasks: list[str] = Field(default_factory=lambda: ["wsm_pack"], min_length=1)
    """lm-eval task, group or tag names: ``wsm_pack`` (the built-in pack: wsm_copy, wsm_add, wsm_count,
    wsm_stdlib_doc), tasks from ``include_path``, or lm-eval's own tasks whose datasets are already in
    the local Hugging Face cache (nothing is downloaded)."""

    include_path: list[str] = Field(default_factory=list)
    """Directories of your own lm-eval task YAML (e.g. ``dataset_path: json`` over local JSONL); their
    files, and the data files their ``dataset_kwargs`` name, enter the cache key by content."""

    limit: int | None = Field(None, ge=1)
    """At most this many items per task (the first ones); None: all."""

    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt; None: each task's own setting (the built-in pack's: 0)."""

    batch_size: int = Field(8, ge=1)
    """Requests per forward pass of lm-eval's ``hf`` model."""

    apply_chat_template: bool = False
    """Wrap prompts in the exported chat template; off: plain prompts, as a base model is usually scored."""

    bootstrap_iters: int = Field(1000, ge=0)
    """Bootstrap resamples for the standard error of non-mean metrics (0 also drops mean metrics' stderr)."""

    pack_items: int = Field(100, ge=1)
    """Built-in pack: items per task (each a pure function of ``seed``)."""

    seed: int = 1234
    """Seed of the built-in pack's items and of lm-eval's few-shot sampling and generators."""

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        if self.enabled and importlib.util.find_spec("lm_eval") is None:
            raise ValueError(
                f"bench.enabled needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
            )
        if any(not t.strip() for t in self.tasks):
            raise ValueError("bench.tasks: a task name is empty")
        return self


class EvalConfig(BaseModel):
    """What an evaluation computes and how; every field enters the cache key."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    suite: str = "builtin"
    """SFT suite: ``builtin`` (generated locally) or a path (a .json/.jsonl file split 9:1, or a
    directory with train.jsonl and valid.jsonl)."""

    suite_seed: int = 0
    """Seed of the built-in suite's items and of a single file's train/held-out split."""

    builtin_train_per_task: int = Field(200, ge=1)
    """Built-in suite: training items per synthetic task."""

    builtin_valid_per_task: int = Field(20, ge=1)
    """Built-in suite: held-out (loss and accuracy) items per synthetic task."""

    builtin_doc_items: int | None = Field(None, ge=5)
    """Built-in suite: at most this many standard-library docstring questions (80/20 split); None: all (~300)."""

    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Fine-tuning recipe (WSO paper Appendix D defaults)."""

    sharpness: SharpnessConfig = Field(default_factory=SharpnessConfig)
    """Hutchinson settings (WSO paper Appendix H defaults)."""

    sharpness_on: list[Literal["pretrain", "sft"]] = Field(
        default_factory=lambda: ["pretrain", "sft"]  # type: ignore[arg-type]
    )
    """Held-out data to measure sharpness on."""

    pretrain_loss: bool = True
    """Measure the loss on the run's held-out pre-training split."""

    pretrain_valid_samples: int | None = Field(None, ge=1)
    """Held-out pre-training sequences; None: as many as the trainer validated on."""

    run_sft: bool = True
    """Fine-tune and measure SFT loss and task accuracy (False: only the pre-training metrics)."""

    max_new_tokens: int = Field(32, ge=1)
    """Greedy decoding budget per task answer."""

    answer_extractor: Literal["whole", "gsm8k", "regex"] = "whole"
    """What task accuracy compares in the output and the reference: whole (the whole answer, with the
    built-in suite's per-task rules), gsm8k (the number after GSM8K's '####', else the last number),
    regex (the first match of answer_regex, its first group if it has one)."""

    answer_regex: str | None = None
    """The pattern of answer_extractor=regex, e.g. 'The answer is (\\S+)'; a reference it does not match is
    compared whole."""

    eval_batch_size: int = Field(32, ge=1)
    """Sequences per forward pass for losses and generation."""

    seed: int = 0
    """Seed of torch's generators at the start of evaluation."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to evaluate; auto picks CUDA when available."""

    # A stage that is off leaves no trace in dumps: job ids and evaluation cache keys (digests of the
    # dump) stay what they were before the stage existed, so stored results keep matching.
    bench: BenchConfig = Field(default_factory=BenchConfig, exclude_if=lambda b: not b.enabled)
    """lm-evaluation-harness benchmarks (off by default); scores become ``bench/<task>/<metric>`` metrics."""

    @model_validator(mode="after")
    def _check_extractor(self) -> EvalConfig:
        if (self.answer_extractor == "regex") != (self.answer_regex is not None):
            raise ValueError("answer_regex goes with answer_extractor=regex, and regex needs answer_regex")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise ValueError(
                    f"answer_regex {self.answer_regex!r} is not a regular expression: {exc}"
                ) from None
        return self

    def seeds(self) -> list[int]:
        """Every seed the result depends on (recorded in the manifest)."""
        seeds = [self.seed, self.suite_seed, self.sft.seed, self.sharpness.seed]
        return [*seeds, self.bench.seed] if self.bench.enabled else seeds
