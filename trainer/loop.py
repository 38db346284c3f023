"""The training loop: setup (data, model, engine, schedule, resume) and steps with async checkpoints.

Step ``s`` (0-based) consumes the samples of step ``s`` (see :mod:`trainer.data`) and runs with
the LR of scheduler step ``s+1``. After step ``s`` the run has seen ``(s+1) × tokens_per_step``
tokens; a checkpoint is due at the first step whose token count reaches the next multiple of
``save_every``, and is named by its token count in the store. Checkpoints thus stay within one
step of the grid however long the run is (a fixed step count would drift off it), which is what
lets a merge on ``--interval 25B`` find them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from trainer.checkpoint import (
    AsyncSaver,
    SaveJob,
    Snapshot,
    is_dist_checkpoint,
    load_checkpoint,
    load_weights_into,
    read_train_state,
    snapshot_weights,
)
from trainer.config import TrainConfig
from trainer.data import BatchSource, PreparedData, build_datasets, epoch_samples, prepare_data
from trainer.dist_save import DistCheckpointer, DistPublication
from trainer.dist_state import CHECKPOINT_VERSION, megatron_args, sharded_state_dict
from trainer.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    collective_device,
    dp_group,
    init_distributed,
    tp_group,
)
from trainer.engine import CPUEngine, GPUEngine
from trainer.metrics import MetricsSink
from trainer.model import build_model, count_parameters, padded_vocab_size
from trainer.runinfo import describe_run, ensure_run
from trainer.schedule import ScheduleSpec, build_scheduler, resolve_schedule
from trainer.signals import StopFlag
from trainer.units import format_tokens, tokens_to_steps
from wsm.store import CheckpointManifest, Store, open_store

log = logging.getLogger(__name__)

# Sample horizon prepared for runs without an end: 100 passes, capped; beyond it the order repeats.
_HORIZON_EPOCHS = 100
_HORIZON_CAP = 2**25


def use_cuda(cfg: TrainConfig) -> bool:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available")
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def prepare_on_main(cfg: TrainConfig, info: DistInfo) -> PreparedData:
    """Rank 0 builds the cache; the others wait and then read it (cache hit)."""
    prepared = prepare_data(cfg.data) if info.is_main else None
    barrier()
    return prepared if prepared is not None else prepare_data(cfg.data)


def horizon_samples(prepared: PreparedData, cfg: TrainConfig) -> int:
    """Training samples the shuffle is built for: a function of the corpus only, never of train_tokens,
    so extending a run, resuming it or branching it keeps the same data order."""
    per_epoch = epoch_samples(prepared, cfg.model.seq_length, cfg.data.valid_fraction)
    return max(per_epoch, min(_HORIZON_EPOCHS * per_epoch, _HORIZON_CAP))


@dataclass
class TrainResult:
    """What a call to :meth:`Trainer.train` did (rank-local; losses are DP-averaged at log steps)."""

    start_step: int
    step: int
    tokens: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    stalls_s: list[float] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    stopped_by_signal: bool = False
    final_snapshot: Snapshot | None = None


class Trainer:
    """A configured run on this process; :meth:`train` runs it until done or stopped."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        store: Store | None = None,
        schedule: ScheduleSpec | None = None,
        save_checkpoints: bool = True,
        start_from: CheckpointManifest | None = None,
        stop_step: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.cuda = use_cuda(cfg)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.cuda)
        if self.bf16 and not self.cuda:
            raise ValueError("precision=bf16 needs CUDA (megatron's CPU backward fails under bf16 autocast)")
        if cfg.parallel.distributed_optimizer is not None and not self.cuda:
            raise ValueError(
                "parallel.distributed_optimizer is megatron's GPU optimizer; leave it unset on CPU"
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.info = init_distributed(cfg.parallel.tensor_parallel, cuda=self.cuda)
        self.store = store or open_store(cfg.store)
        self.save_checkpoints = save_checkpoints
        self.spec = schedule or resolve_schedule(cfg)
        self.tokens_per_step = cfg.tokens_per_step
        self.save_every_tokens = cfg.checkpoint.save_every
        self.stop_step = stop_step
        if stop_step is None and cfg.train_tokens is not None:
            self.stop_step = tokens_to_steps(cfg.train_tokens, self.tokens_per_step)

        self.prepared = prepare_on_main(cfg, self.info)
        datasets = build_datasets(
            self.prepared,
            seq_length=cfg.model.seq_length,
            seed=cfg.seed,
            train_samples=horizon_samples(self.prepared, cfg),
            valid_samples=cfg.data.valid_samples,
            valid_fraction=cfg.data.valid_fraction,
        )
        self.source = BatchSource(
            datasets.train,
            global_batch=cfg.global_batch_size,
            micro_batch=cfg.micro_batch_size,
            dp_rank=self.info.dp_rank,
            dp_size=self.info.dp_size,
        )
        self.valid = datasets.valid
        self.vocab = padded_vocab_size(self.prepared.vocab_size, cfg.model.vocab_multiple, self.info.tp_size)
        self.model = build_model(
            cfg.model,
            self.vocab,
            seed=cfg.seed,
            tensor_parallel=self.info.tp_size,
            cuda=self.cuda,
            bf16=self.bf16,
        )
        self.engine: CPUEngine | GPUEngine = (
            GPUEngine(
                self.model,
                cfg.optim,
                self.info,
                bf16=self.bf16,
                distributed=cfg.parallel.distributed_optimizer,
            )
            if self.cuda
            else CPUEngine(self.model, cfg.optim, self.info)
        )
        self.step = 0
        self.last_saved_step = -1
        self._snapshot_split_s = (0.0, 0.0)
        self.desc = describe_run(cfg, self.prepared, self.spec, self.vocab)
        if save_checkpoints and self.info.is_main:
            ensure_run(self.store, cfg, self.prepared, self.desc)
            self.store.cleanup_dead_writers(f"runs/{cfg.run}")  # a killed predecessor's staging, at once
        barrier()
        self._resume(start_from)
        self.scheduler = build_scheduler(self.engine.param_groups_owner, self.spec, steps_done=self.step)
        self.metrics = (
            MetricsSink(self.store, cfg.run, tensorboard=cfg.tensorboard)
            if self.info.is_main and save_checkpoints
            else None
        )
        self.saver = (
            AsyncSaver(
                self.store, cfg.run, retries=cfg.checkpoint.upload_retries, on_published=self._after_publish
            )
            if self.info.is_main
            else None
        )
        self.checkpointer = (
            DistCheckpointer(
                self.store, cfg.run, self.info, self.saver, scratch_dir=cfg.checkpoint.scratch_dir
            )
            if save_checkpoints and cfg.checkpoint.format == "torch_dist"
            else None
        )
        log.info(
            "model: %s parameters/rank (vocab %d), %s, TP=%d DP=%d, %s tokens/step, checkpoint every %s tokens",
            f"{count_parameters(self.model):,}",
            self.vocab,
            self._describe_device(),
            self.info.tp_size,
            self.info.dp_size,
            format_tokens(self.tokens_per_step),
            format_tokens(self.save_every_tokens),
        )

    def _describe_device(self) -> str:
        if not self.cuda:
            return "cpu/fp32"
        from trainer.model import have_transformer_engine

        engine = self.engine
        return "cuda/{}, {} spec, {} optimizer".format(
            "bf16" if self.bf16 else "fp32",
            "TE" if have_transformer_engine() else "local",
            "distributed" if isinstance(engine, GPUEngine) and engine.distributed else "megatron",
        )

    # -- resume -------------------------------------------------------------------------------
    def _resume(self, start_from: CheckpointManifest | None) -> None:
        target = start_from
        if target is None and self.cfg.checkpoint.resume and self.save_checkpoints:
            latest = self.store.latest_checkpoint(self.cfg.run) if self.info.is_main else None
            target = broadcast_object(latest)  # type: ignore[assignment]
        if target is None:
            return
        dist_layout = is_dist_checkpoint(target)
        if dist_layout:
            self.store.verify(target, full=False)
            state = read_train_state(self.store, target)
        else:
            ckpt = load_checkpoint(self.store, target)
            state = ckpt.state
        if state.get("tokens_per_step") != self.tokens_per_step:
            raise ValueError(
                f"{target.dir}: written with {state.get('tokens_per_step')} tokens/step, "
                f"config has {self.tokens_per_step}"
            )
        if dist_layout:
            from trainer.dist_load import resume_from

            resume_from(
                self.model,
                self.engine,
                self.info,
                self.store,
                target,
                state,
                scratch_dir=self.cfg.checkpoint.scratch_dir,
            )
        else:
            load_weights_into(self.model, ckpt.weights, tp_rank=self.info.tp_rank, tp_size=self.info.tp_size)
            self.engine.restore_optimizer(ckpt.optim, ckpt.megatron_optim, int(state["adam_step"]))
        self.step = int(state["step"])
        self.last_saved_step = self.step
        log.info(
            "resumed from %s: step %d, %s tokens",
            target.dir,
            self.step,
            format_tokens(self.step * self.tokens_per_step),
        )

    # -- checkpoints --------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        """What ``train_state.json`` records: where the run is and the layout that wrote it."""
        return {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "adam_step": self.step,
            "tokens_per_step": self.tokens_per_step,
            "consumed_samples": self.step * self.cfg.global_batch_size,
            "scheduler_steps": self.scheduler.num_steps,
            "schedule": self.spec.to_json(),
            "seed": self.cfg.seed,
            "data_fingerprint": self.prepared.fingerprint,
            "world_size": self.info.world_size,
            "tensor_parallel": self.info.tp_size,
            "data_parallel": self.info.dp_size,
            "engine": "gpu" if self.cuda else "cpu",
            "format": self.cfg.checkpoint.format,
        }

    def snapshot(self, extra: dict[str, Any] | None = None) -> Snapshot | None:
        """Collective: full weights and training state on rank 0 (None elsewhere): the legacy
        layout's checkpoint, and the weights a decay branch publishes."""
        start = time.perf_counter()
        weights = snapshot_weights(self.model, tp_group=tp_group(), tp_size=self.info.tp_size)
        mid = time.perf_counter()
        optim, megatron_optim = self.engine.snapshot_optimizer()
        self._snapshot_split_s = (mid - start, time.perf_counter() - mid)
        if not self.info.is_main:
            return None
        return Snapshot(
            tokens=self.step * self.tokens_per_step,
            step=self.step,
            weights=weights,
            optim=optim,
            state={**self.train_state(), "format": "safetensors"},
            extra=dict(extra or {}),
            megatron_optim=megatron_optim,
        )

    def common_state(self) -> dict[str, Any]:
        """The non-sharded part of a ``torch_dist`` checkpoint (``common.pt``), as Megatron-LM's."""
        return {
            "args": megatron_args(
                self.cfg,
                self.info,
                vocab_size=self.prepared.vocab_size,
                padded_vocab=self.vocab,
                spec=self.spec,
                step=self.step,
                bf16=self.bf16,
                distributed_optimizer=isinstance(self.engine, GPUEngine) and self.engine.distributed,
            ),
            "iteration": self.step,
            "checkpoint_version": CHECKPOINT_VERSION,
            "opt_param_scheduler": self.scheduler.state_dict(),
            "num_floating_point_operations_so_far": 0,
            "wsm": self.train_state(),
        }

    def _after_publish(self, manifest: CheckpointManifest, snap: SaveJob) -> None:
        if self.metrics is not None:
            self.metrics.flush(snap.metrics)

    def _save(self, result: TrainResult, extra: dict[str, Any], *, sync: bool) -> None:
        if self.checkpointer is not None:
            self._save_dist(result, extra, sync=sync)
            return
        start = time.perf_counter()
        self.last_saved_step = self.step
        snap = self.snapshot(extra)
        if snap is None or self.saver is None:
            return
        snap.metrics = self.metrics.take() if self.metrics is not None else []
        if sync:
            self.saver.save_now(snap)
            return
        waited = self.saver.submit(snap)
        stall = time.perf_counter() - start
        result.stalls_s.append(stall)
        result.checkpoints.append(snap.tokens)
        log.info(
            "checkpoint %s tokens: stall %.3fs (weights %.3fs, optimizer state %.3fs, %.3fs waiting for "
            "the previous save)",
            format_tokens(snap.tokens),
            stall,
            *self._snapshot_split_s,
            waited,
        )

    def _save_dist(self, result: TrainResult, extra: dict[str, Any], *, sync: bool) -> None:
        """A ``torch_dist`` checkpoint (collective): every rank schedules its own shards."""
        assert self.checkpointer is not None
        start = time.perf_counter()
        self.last_saved_step = self.step
        waited = self.checkpointer.wait()
        built = time.perf_counter()
        state_dict = sharded_state_dict(
            self.model, self.engine, self.info, is_loading=False, common=self.common_state()
        )
        job = DistPublication(
            tokens=self.step * self.tokens_per_step,
            step=self.step,
            state=self.train_state(),
            extra=dict(extra),
            metrics=self.metrics.take() if self.metrics is not None else [],
        )
        planned = time.perf_counter()
        self.checkpointer.save(state_dict, job, sync=sync)
        end = time.perf_counter()
        if sync or not self.info.is_main:
            return
        stall = end - start
        result.stalls_s.append(stall)
        result.checkpoints.append(job.tokens)
        log.info(
            "checkpoint %s tokens: stall %.3fs (state dicts %.3fs, megatron plan and snapshot %.3fs, "
            "%.3fs waiting for the previous save)",
            format_tokens(job.tokens),
            stall,
            planned - built,
            end - planned,
            waited,
        )

    # -- validation ---------------------------------------------------------------------------
    def validation_loss(self) -> float | None:
        """Mean loss over the held-out samples, split across DP ranks."""
        if self.valid is None:
            return None
        # megatron builds at least a whole epoch of the split; the config says how much to use,
        # and evaluation (trainer.eval_data.pretrain_valid) takes the same first samples.
        n = min(len(self.valid), self.cfg.data.valid_samples)  # type: ignore[arg-type]
        mb = self.cfg.micro_batch_size
        total = torch.zeros(2, dtype=torch.float64)
        for first in range(self.info.dp_rank * mb, n, mb * self.info.dp_size):
            idx = range(first, min(first + mb, n))
            items = [self.valid[i] for i in idx]  # type: ignore[index]
            batch = {
                k: torch.stack([it[k] for it in items])
                for k in ("tokens", "labels", "loss_mask", "position_ids")
            }
            total += torch.tensor(
                [float(self.engine.eval_loss(batch)) * len(idx), len(idx)], dtype=torch.float64
            )
        if self.info.dp_size > 1:
            total = total.to(collective_device())
            dist.all_reduce(total, group=dp_group())
            total = total.cpu()
        return float(total[0] / total[1]) if total[1] else None

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> TrainResult:
        result = TrainResult(start_step=self.step, step=self.step, tokens=self.step * self.tokens_per_step)
        num_micro = self.source.num_micro
        window_tokens, window_start = 0, time.perf_counter()
        with StopFlag() as stop:
            while self.stop_step is None or self.step < self.stop_step:
                if self.checkpointer is not None:
                    self.checkpointer.poll()  # collective while a save is in flight
                elif self.saver is not None:
                    self.saver.check()
                t0 = time.perf_counter()
                self.scheduler.step(1)
                lr = float(self.engine.param_groups_owner.param_groups[0]["lr"])
                step = self.step
                batches = (self.source.get(step, m) for m in range(num_micro))
                loss_t, gnorm = self.engine.train_step(batches, num_micro)
                self.step += 1
                result.step_times_s.append(time.perf_counter() - t0)
                result.lrs.append(lr)
                window_tokens += self.tokens_per_step
                tokens = self.step * self.tokens_per_step
                due_save = self.save_checkpoints and self._crossed_save_point(self.step)
                stop_now = self._stop_requested(stop)
                if self.step % self.cfg.log_every == 0 or due_save or stop_now or self.step == self.stop_step:
                    loss = self._dp_mean(float(loss_t))
                    result.losses.append(loss)
                    elapsed = time.perf_counter() - window_start
                    tps = window_tokens / elapsed if elapsed > 0 else 0.0
                    window_tokens, window_start = 0, time.perf_counter()
                    self._log(tokens, loss, lr, gnorm, tps)
                    if self.metrics is not None:
                        self.metrics.add(
                            {
                                "step": self.step,
                                "tokens": tokens,
                                "loss": loss,
                                "lr": lr,
                                "grad_norm": gnorm,
                                "tokens_per_s": tps,
                                "time": time.time(),
                            }
                        )
                        if self.metrics.due() and not due_save:
                            self.metrics.flush()  # rare checkpoints must not hide the curve for long
                if due_save:
                    val = self.validation_loss()
                    if self.metrics is not None and val is not None:
                        self.metrics.add(
                            {"step": self.step, "tokens": tokens, "val_loss": val, "time": time.time()}
                        )
                    self._save(result, {"lr": lr, "loss": float(loss_t), "val_loss": val}, sync=False)
                    window_start = time.perf_counter()  # the save is not training throughput
                if stop_now:
                    result.stopped_by_signal = True
                    break
            self._finish(result, stop)
        result.step, result.tokens = self.step, self.step * self.tokens_per_step
        return result

    def _stop_requested(self, stop: StopFlag) -> bool:
        if self.info.world_size == 1:
            return stop.requested
        # Every rank must leave the loop at the same step (collectives follow).
        flag = torch.tensor([1 if stop.requested else 0], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _finish(self, result: TrainResult, stop: StopFlag) -> None:
        if self.checkpointer is not None:
            self.checkpointer.wait()
        if self.saver is not None:
            # Finish the in-flight save (a second signal abandons it: KeyboardInterrupt).
            self.saver.wait()
            self.saver.check()
        want_final = self.save_checkpoints and (
            not result.stopped_by_signal or self.cfg.checkpoint.save_on_exit
        )
        if want_final and self.step > result.start_step and self.last_saved_step != self.step:
            self._save(result, {"final": True}, sync=True)
            result.checkpoints.append(self.step * self.tokens_per_step)
        if self.metrics is not None:
            self.metrics.close()
        barrier()

    def _dp_mean(self, value: float) -> float:
        if self.info.dp_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=collective_device())
        dist.all_reduce(t, group=dp_group())
        return float(t.item() / self.info.dp_size)

    def _crossed_save_point(self, step: int) -> bool:
        """Whether the tokens seen after ``step`` steps reached a multiple of save_every that step."""
        before, after = (step - 1) * self.tokens_per_step, step * self.tokens_per_step
        return after // self.save_every_tokens > before // self.save_every_tokens

    def _next_save_tokens(self, step: int) -> int:
        """Token count of the next checkpoint: the first step boundary at or past the next multiple."""
        target = (step * self.tokens_per_step // self.save_every_tokens + 1) * self.save_every_tokens
        return tokens_to_steps(target, self.tokens_per_step) * self.tokens_per_step

    def _log(self, tokens: int, loss: float, lr: float, gnorm: float, tps: float) -> None:
        if not self.info.is_main:
            return
        nxt = ""
        if self.cuda:
            nxt += f" | peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        if self.save_checkpoints:
            nxt += f" | next ckpt {format_tokens(self._next_save_tokens(self.step))}"
        log.info(
            "step %d | tokens %s | loss %.4f | lr %.3e | gnorm %.3f | %s tok/s%s",
            self.step,
            format_tokens(tokens),
            loss,
            lr,
            gnorm,
            f"{tps:,.0f}",
            nxt,
        )
        if math.isnan(loss):
            raise FloatingPointError(f"loss is NaN at step {self.step}")
