"""Trainer throughput vs a plain PyTorch loop of the same Llama architecture and batch, and checkpoint stall.

    python bench/train.py [--config demo] [--steps 40] [--threads 2]
    python bench/train.py --device cuda --set model.preset=125m --set data.vocab_size=32768 \
        --set micro_batch_size=16 --set global_batch_size=32 --steps 20

Both loops train on the same batches (megatron GPTDataset samples), alternating in one process
so machine load hits both alike. CPU: fp32, AdamW, the same thread count. CUDA: our trainer's
megatron path (bf16 weights, fp32 main params and grads, megatron DDP and optimizer) against the
plain loop under bf16 autocast with fp32 weights and fused AdamW. Reported: tokens/s of each and
their ratio (target >= 0.9); the checkpoint *stall* (time on the training thread per save) as a
fraction of a step at the config's save interval (target < 5%), for Megatron's torch_dist format
(every rank writes its own shards) and for the legacy safetensors one (gathered to rank 0), on
the same model (``checkpoint_formats``, ``stall_new_over_old``); the throughput cost of saving in
the background; on CUDA also model FLOPs utilisation (6N + attention per token, against
--peak-tflops) and the trainer's peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")
log = logging.getLogger("bench.train")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class Block(nn.Module):
    def __init__(self, hidden: int, ffn: int, heads: int, groups: int, eps: float) -> None:
        super().__init__()
        self.heads, self.groups, self.dim = heads, groups, hidden // heads
        self.norm1, self.norm2 = RMSNorm(hidden, eps), RMSNorm(hidden, eps)
        self.qkv = nn.Linear(hidden, (heads + 2 * groups) * self.dim, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.fc1 = nn.Linear(hidden, 2 * ffn, bias=False)
        self.fc2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(
            [self.heads * self.dim, self.groups * self.dim, self.groups * self.dim], -1
        )
        q = rope(q.view(b, s, self.heads, self.dim).transpose(1, 2), cos, sin)
        k = rope(k.view(b, s, self.groups, self.dim).transpose(1, 2), cos, sin)
        v = v.view(b, s, self.groups, self.dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.fc1(self.norm2(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


class PlainLlama(nn.Module):
    def __init__(
        self, vocab: int, hidden: int, ffn: int, layers: int, heads: int, groups: int, eps: float, base: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, ffn, heads, groups, eps) for _ in range(layers))
        self.norm = RMSNorm(hidden, eps)
        self.head = nn.Linear(hidden, vocab, bias=False)
        dim = hidden // heads
        self.inv_freq = 1.0 / base ** (torch.arange(0, dim, 2).float() / dim)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        freqs = torch.outer(
            torch.arange(tokens.shape[1], device=tokens.device).float(), self.inv_freq.to(tokens.device)
        )
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.reshape(-1))


def _median_tps(times: list[float], tokens_per_step: int) -> float:
    return tokens_per_step / statistics.median(times)


def flops_per_token(model: torch.nn.Module, layers: int, hidden: int, seq: int) -> tuple[int, float]:
    """(N, training FLOPs per token): 6N for the matmuls of N non-embedding parameters (the output
    layer counts, the input embedding is a lookup) plus 12·layers·hidden·seq for attention."""
    n = sum(p.numel() for name, p in model.named_parameters() if "word_embeddings" not in name)
    return n, 6.0 * n + 12.0 * layers * hidden * seq


CHECKPOINT_FORMATS = ("torch_dist", "safetensors")


def checkpoint_stall(
    trainer_cls: Any, base: Any, store: Any, fmt: str, save_steps: int, warm: int
) -> dict[str, Any]:
    """Stall per save (training thread), save-to-published time, and the slowdown of the steps
    after each save (background writing competes for the same cores), for one checkpoint format."""
    tps = base.tokens_per_step
    steps = 2 * save_steps + warm
    cfg = base.model_copy(
        update={
            "run": f"bench-ckpt-{fmt.replace('_', '-')}",
            "train_tokens": steps * tps,
            "checkpoint": base.checkpoint.model_copy(update={"format": fmt}),
        }
    )
    start = time.perf_counter()
    rc = trainer_cls(cfg, store=store).train()
    total = time.perf_counter() - start
    median_step = statistics.median(rc.step_times_s[warm:])
    stall = statistics.mean(rc.stalls_s) if rc.stalls_s else 0.0
    after = [t for i, t in enumerate(rc.step_times_s) if i > warm and (i % save_steps) < 5]
    sizes = [c.total_bytes for c in store.list_checkpoints(cfg.run)]
    return {
        "saves": len(rc.stalls_s),
        "median_step_s": round(median_step, 4),
        "stall_per_save_s": round(stall, 4),
        "stall_fraction_of_step": round(stall / median_step, 4),
        "steps_after_save_slowdown": round(statistics.mean(after) / median_step - 1, 3) if after else None,
        "run_wall_s": round(total, 2),
        "checkpoint_bytes": sizes[-1] if sizes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="trainer config override (repeatable)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("megatron", "trainer", "wsm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    from trainer.config import load_config
    from trainer.loop import Trainer
    from trainer.units import parse_tokens, tokens_to_steps
    from wsm.store import Store

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda") if cuda else torch.device("cpu")
    base = load_config(
        args.config, [f"threads={args.threads}", f"device={'cuda' if cuda else 'cpu'}", *args.set]
    )
    tps = base.tokens_per_step

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    save_steps = tokens_to_steps(parse_tokens(base.checkpoint.save_every), tps)
    warm = 3
    results: dict[str, list[float]] = {"trainer": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/store")
        m = base.model
        # Our trainer without checkpoints (save interval beyond the run) for pure throughput.
        cfg = base.model_copy(
            update={"run": "bench", "checkpoint": base.checkpoint.model_copy(update={"save_every": 10**12})}
        )
        trainer = Trainer(cfg, store=store, save_checkpoints=False)
        source = trainer.source
        n_params, fpt = flops_per_token(trainer.model, m.num_layers, m.hidden_size, m.seq_length)
        torch.manual_seed(0)
        plain = PlainLlama(
            trainer.vocab,
            m.hidden_size,
            m.ffn_hidden_size,
            m.num_layers,
            m.num_attention_heads,
            m.num_query_groups,
            m.norm_epsilon,
            m.rotary_base,
        ).to(device)
        decay = [p for p in plain.parameters() if p.ndim >= 2]
        rest = [p for p in plain.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=base.optim.lr,
            betas=(0.9, 0.95),
            **({"fused": True} if cuda else {"foreach": True}),
        )
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
        plain_step = 0
        peak = {"trainer": 0, "plain": 0}
        for rnd in range(args.rounds):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.stop_step = trainer.step + args.steps + warm
            r = trainer.train()
            results["trainer"].extend(r.step_times_s[warm:])
            if cuda:
                peak["trainer"] = max(peak["trainer"], torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(args.steps + warm):
                sync()
                t0 = time.perf_counter()
                for micro in range(source.num_micro):
                    batch = source.get(plain_step, micro)
                    with autocast:
                        loss = (
                            plain(batch["tokens"].to(device), batch["labels"].to(device)) / source.num_micro
                        )
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                plain_step += 1
                sync()
                if i >= warm:
                    times.append(time.perf_counter() - t0)
            if cuda:
                peak["plain"] = max(peak["plain"], torch.cuda.max_memory_allocated())
            results["plain"].extend(times)
            log.info(
                "round %d: trainer %.0f tok/s, plain %.0f tok/s",
                rnd,
                _median_tps(r.step_times_s[warm:], tps),
                _median_tps(times, tps),
            )

        # Checkpoint stall at the config's save interval, on fresh runs that save for real: the
        # torch_dist format (every rank writes its shards) against the legacy safetensors one
        # (gathered to rank 0), on the same model.
        saves = {
            fmt: checkpoint_stall(Trainer, base, store, fmt, save_steps, warm) for fmt in CHECKPOINT_FORMATS
        }
        median_step = saves["torch_dist"]["median_step_s"]

    trainer_tps = _median_tps(results["trainer"], tps)
    plain_tps = _median_tps(results["plain"], tps)
    figures: dict[str, object] = {
        "config": args.config,
        "overrides": args.set,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": args.threads,
        "tokens_per_step": tps,
        "trainer_tokens_per_s": round(trainer_tps),
        "plain_tokens_per_s": round(plain_tps),
        "ratio": round(trainer_tps / plain_tps, 3),
        "save_every_steps": save_steps,
        "median_step_s": round(median_step, 4),
        **{k: saves["torch_dist"][k] for k in ("stall_per_save_s", "stall_fraction_of_step")},
        "stall_fraction_of_interval": round(
            saves["torch_dist"]["stall_per_save_s"] / (median_step * save_steps), 5
        ),
        "steps_after_save_slowdown": saves["torch_dist"]["steps_after_save_slowdown"],
        "checkpoint_formats": saves,
        "stall_new_over_old": round(
            saves["torch_dist"]["stall_per_save_s"] / max(saves["safetensors"]["stall_per_save_s"], 1e-9), 3
        ),
        "non_embedding_params": n_params,
        "train_flops_per_token": fpt,
    }
    if cuda:
        figures.update(
            trainer_mfu=round(trainer_tps * fpt / (args.peak_tflops * 1e12), 4),
            plain_mfu=round(plain_tps * fpt / (args.peak_tflops * 1e12), 4),
            peak_tflops=args.peak_tflops,
            trainer_peak_mem_gib=round(peak["trainer"] / 2**30, 2),
            plain_peak_mem_gib=round(peak["plain"] / 2**30, 2),
        )
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
