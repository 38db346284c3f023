"""Real DCP checkpoints for the format tests, written by megatron-core and torch themselves.

- Megatron-LM ``torch_dist`` runs: ``latest_checkpointed_iteration.txt`` and ``iter_0000010/``
  (fp32, with optimizer state) and ``iter_0000020/`` (bf16, model only), each holding what
  Megatron-LM's ``generate_state_dict`` saves: the model's sharded state dict, the optimizer's
  (megatron-core's own mapping of a torch optimizer's state onto the model's shards), ``rng_state``
  and ``rerun_state_machine_state`` ShardedObjects, and ``common.pt`` with an ``args`` namespace.
  TP=1 is saved in the test process; TP=2 by this file run under ``torchrun --nproc-per-node 2``.
- torchtitan (``step-<N>/``) and OLMo-core (``step<N>/model_and_optim/``) layouts saved by
  ``torch.distributed.checkpoint.save(..., no_dist=True)`` with their frameworks' key layout.

Builds are cached under the system temp dir, keyed by the sources that make them and the library
versions, so the suite (and the next run) pays for them once. Tests must copy before corrupting.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[3]
TINY = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 128,
    "num_attention_heads": 4,
    "num_query_groups": 2,
    "seq_length": 32,
}
VOCAB = 128
GLOBAL_BATCH = 8
# (iteration, bf16, with optimizer state)
MEGATRON_ITERATIONS = ((10, False, True), (20, True, False))
TITAN_STEPS = (100, 200)
OLMO_STEPS = (1000, 2000)


def megatron_args(tp: int, bf16: bool, world_size: int) -> argparse.Namespace:
    """An ``args`` namespace shaped like Megatron-LM's (a subset of its fields, its types)."""
    from megatron.core.transformer.enums import AttnBackend

    return argparse.Namespace(
        **TINY,
        group_query_attention=True,
        kv_channels=TINY["hidden_size"] // TINY["num_attention_heads"],
        max_position_embeddings=TINY["seq_length"],
        global_batch_size=GLOBAL_BATCH,
        micro_batch_size=2,
        rampup_batch_size=None,
        vocab_size=None,
        padded_vocab_size=VOCAB,
        make_vocab_size_divisible_by=64,
        normalization="RMSNorm",
        norm_epsilon=1e-5,
        swiglu=True,
        position_embedding_type="rope",
        rotary_base=10000,
        rotary_percent=1.0,
        untie_embeddings_and_output_weights=True,
        add_bias_linear=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        world_size=world_size,
        data_parallel_size=world_size // tp,
        bf16=bf16,
        fp16=False,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        attention_backend=AttnBackend.auto,
        ckpt_format="torch_dist",
        train_iters=100,
        tokenizer_type="NullTokenizer",
    )


def save_megatron_iteration(save_dir: Path, iteration: int, *, tp: int, bf16: bool, optimizer: bool) -> Path:
    """One Megatron-LM-style ``iter_<7 digits>/`` checkpoint of a tiny GPTModel (process group ready)."""
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    from trainer.config import ModelConfig
    from trainer.dist_checkpoint import cpu_save_support
    from trainer.model import build_model

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    tp_rank, dp_rank = (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    model = build_model(
        ModelConfig(preset=None, **TINY), VOCAB, seed=iteration, tensor_parallel=tp, bf16=bf16
    )
    state: dict[str, Any] = {"model": model.sharded_state_dict()}
    if optimizer:
        # What megatron-core's FP32Optimizer.sharded_state_dict does (that class allocates on CUDA).
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        osd = opt.state_dict()
        id_map = get_param_id_to_sharded_param_map(state["model"], model.parameters())
        optim_state_to_sharding_state(osd, id_map, exclude_keys="step")
        state["optimizer"] = osd
    state["rng_state"] = ShardedObject(
        "rng_state", [{"random_rng_state": torch.get_rng_state()}], (1, tp), (0, tp_rank), replica_id=dp_rank
    )
    state["rerun_state_machine"] = {
        "mode": "disabled",
        "sharded": ShardedObject("rerun_state_machine_state", {"step": iteration}, (world,), (rank,)),
    }
    state.update(
        args=megatron_args(tp, bf16, world),
        checkpoint_version=3.0,
        iteration=iteration,
        opt_param_scheduler={"num_steps": iteration * GLOBAL_BATCH},
        num_floating_point_operations_so_far=0.0,
    )
    out = save_dir / f"iter_{iteration:07d}"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    with cpu_save_support():
        dist_checkpointing.save(state, str(out))
    if rank == 0:
        (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    torch.distributed.barrier()
    return out


def megatron_run(save_dir: Path, tp: int) -> None:
    """Every iteration of :data:`MEGATRON_ITERATIONS` at tensor parallel ``tp`` (joins or makes the group)."""
    from trainer.distributed import init_distributed

    init_distributed(tp)
    for iteration, bf16, optimizer in MEGATRON_ITERATIONS:
        save_megatron_iteration(save_dir, iteration, tp=tp, bf16=bf16, optimizer=optimizer)


def torchrun_script(script: str, save_dir: Path, tp: int, timeout: float) -> None:
    """Run a fixture ``script`` (its ``--tp``/``--out`` main) in ``tp`` gloo processes under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp)]
    cmd += [script, "--tp", str(tp), "--out", str(save_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun save failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def megatron_run_torchrun(save_dir: Path, tp: int) -> None:
    """:func:`megatron_run` in ``tp`` gloo processes under torchrun (this file as the script)."""
    torchrun_script(__file__, save_dir, tp, timeout=500)


class TinyLM(torch.nn.Module):
    """A small torch model with float, bf16, integer, scalar and empty state."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tok_embeddings = torch.nn.Embedding(VOCAB, 32)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(32, 48), torch.nn.Linear(48, 32, bias=False)])
        self.norm = torch.nn.RMSNorm(32)
        self.output = torch.nn.Linear(32, VOCAB, bias=False)
        self.register_buffer("freqs", torch.randn(16, 8).to(torch.bfloat16))
        self.register_buffer("positions", torch.arange(16, dtype=torch.int64))
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("empty", torch.zeros(0, 4))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = torch.relu(layer(h))
        logits: torch.Tensor = self.output(self.norm(h))
        return logits


def _trained(step: int) -> tuple[TinyLM, Any, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = TinyLM(seed=step)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.arange(8)).sum().backward()
    opt.step()
    return model, get_model_state_dict(model), get_optimizer_state_dict(model, opt)


def torchtitan_run(root: Path) -> None:
    """torchtitan's layout: ``step-<N>/`` with model keys at the top, then optimizer and training state."""
    from torch.distributed.checkpoint.state_dict_saver import save

    for step in TITAN_STEPS:
        _, model_sd, optim_sd = _trained(step)
        state = {
            **model_sd,
            "optimizer": optim_sd,
            "lr_scheduler": {"last_epoch": step, "_step_count": step + 1},
            "dataloader": {"world_size": 1, "state": {"epoch": 0, "offset": step * 64}},
            "train_state": {"step": step, "ntokens_seen": step * 256},
        }
        save(state, checkpoint_id=str(root / f"step-{step}"), no_dist=True)


def olmo_run(root: Path) -> None:
    """OLMo-core's layout: ``step<N>/model_and_optim/`` holding ``{"model": ..., "optim": ...}``."""
    from torch.distributed.checkpoint.state_dict_saver import save

    for step in OLMO_STEPS:
        _, model_sd, optim_sd = _trained(step)
        step_dir = root / f"step{step}"
        save(
            {"model": model_sd, "optim": optim_sd},
            checkpoint_id=str(step_dir / "model_and_optim"),
            no_dist=True,
        )
        (step_dir / "train").mkdir()
        torch.save({"global_step": step}, step_dir / "train" / "rank0.pt")
        (step_dir / "config.json").write_text("{}")


def _cache_key(name: str) -> str:
    h = hashlib.sha256(name.encode())
    for f in (Path(__file__), ROOT / "trainer" / "model.py", ROOT / "trainer" / "dist_checkpoint.py"):
        h.update(f.read_bytes())
    import megatron.core

    h.update(f"{torch.__version__} {megatron.core.__version__}".encode())
    return h.hexdigest()[:16]


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """``build(dir)`` once per content key; later calls (and later sessions) reuse the result.

    Built under a temporary name and renamed, so a half-built fixture is never reused.
    """
    base = Path(tempfile.gettempdir()) / "wsm-dcp-fixtures"
    final = base / f"{name}-{_cache_key(name)}"
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another session published it first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    megatron_run(args.out, args.tp)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
