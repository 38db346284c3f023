"""Stored models out of the store: rebuild them as megatron models, or export a Hugging Face Llama dir.

A *model dir* is the store-relative directory of a checkpoint (``runs/r/checkpoints/000…``) or of an
annealed/baseline model (``runs/r/models/name``). Both hold full tensors under megatron's local-spec
names (one ``model.safetensors`` or HF-style shards), and the run manifest says the shape and
where the tokenizer is, so the same code reads both. A Hugging Face directory (``hf:<path>``,
:mod:`trainer.hf_dir`, e.g. a mergekit output) is exported again with its run's tokenizer and chat
template, in the dtype asked for.

HF mapping (see the shared megatron notes): the fused ``linear_qkv`` rows are grouped by query
group (that group's query heads, then one key head, then one value head); ``linear_fc1`` is
``[gate; up]``; megatron's non-interleaved RoPE is HF's ``rotate_half``, so no permutation. The
padded vocabulary rows (never targets) are cut to the tokenizer's size, so HF logits equal ours
on every real token.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.chat import CHAT_TEMPLATE
from trainer.config import ModelConfig
from trainer.hf_dir import RUN_KEY
from trainer.load import StoredModel, load_weights, resolve
from trainer.tokenizer import ROLE_TOKENS, eod_id, hf_tokenizer, pad_id, role_tokens
from wsm.store import Store

log = logging.getLogger(__name__)


def to_hf_state_dict(
    weights: dict[str, torch.Tensor], cfg: ModelConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """megatron local-spec tensors -> ``LlamaForCausalLM`` tensors (vocab rows cut to ``vocab_size``)."""
    heads, groups, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    per = heads // groups
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": weights["embedding.word_embeddings.weight"][:vocab_size]
    }
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = weights[src + "self_attention.linear_qkv.weight"].view(groups, per + 2, hd, cfg.hidden_size)
        out[dst + "self_attn.q_proj.weight"] = qkv[:, :per].reshape(heads * hd, cfg.hidden_size)
        out[dst + "self_attn.k_proj.weight"] = qkv[:, per].reshape(groups * hd, cfg.hidden_size)
        out[dst + "self_attn.v_proj.weight"] = qkv[:, per + 1].reshape(groups * hd, cfg.hidden_size)
        out[dst + "self_attn.o_proj.weight"] = weights[src + "self_attention.linear_proj.weight"]
        gate, up = weights[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = weights[src + "mlp.linear_fc2.weight"]
        # The local spec keeps the pre-norms as separate modules (TE names were canonicalised on save).
        out[dst + "input_layernorm.weight"] = weights[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = weights[src + "pre_mlp_layernorm.weight"]
    out["model.norm.weight"] = weights["decoder.final_layernorm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = weights["output_layer.weight"][:vocab_size]
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_config(cfg: ModelConfig, vocab_size: int, eos: int, pad: int | None, dtype: str) -> dict[str, object]:
    """``config.json`` of the equivalent ``LlamaForCausalLM``."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.norm_epsilon,
        rope_theta=float(cfg.rotary_base),  # type: ignore[call-arg]
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        dtype=dtype,
    )
    out = config.to_dict()
    out["architectures"] = ["LlamaForCausalLM"]
    # transformers 5 nests the RoPE base under rope_parameters; older readers look for rope_theta.
    out["rope_theta"] = float(cfg.rotary_base)
    return out


def export_hf(
    store: Store,
    run: str,
    model_dir: str,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    cache_dir: str | None = None,
) -> Path:
    """Write ``model_dir`` as a Hugging Face Llama directory (config, safetensors, tokenizer with chat template)."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    sm = resolve(store, run, model_dir, cache_dir)
    final = Path(out_dir).expanduser()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ValueError(f"{final} exists and is not an empty directory; choose another output directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place at the end: a failed export leaves nothing.
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _write_hf_dir(store, sm, out, dtype)
        _share(out)
        if final.exists():
            final.rmdir()
        out.rename(final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return final


def _share(directory: Path) -> None:
    """Ordinary permissions (0755 directories, 0644 files): mkdtemp makes the staging dir 0700, and an
    export is meant to be read by other users and tools (serving, evaluation harnesses)."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _write_hf_dir(store: Store, sm: StoredModel, out: Path, dtype: str) -> None:
    tok = sm.tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tensors = to_hf_state_dict(load_weights(store, sm.manifest), sm.model_cfg, vocab)
    torch_dtype = getattr(torch, dtype)
    save_file(
        {k: v.to(torch_dtype) for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt", "wsm_model_id": sm.model_dir},
    )
    eos = eod_id(tok)
    config = hf_config(sm.model_cfg, vocab, eos, pad_id(tok), dtype)
    # Which run's data and tokenizer go with these weights: `wsm evaluate DIR` reads it back, and
    # mergekit keeps the base model's config, so a merge of exports still names its run.
    config[RUN_KEY] = sm.run.run
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos, "eos_token_id": eos, "do_sample": False})
    )
    hf_tok = hf_tokenizer(sm.tokenizer_path)
    if len(role_tokens(tok)) < len(ROLE_TOKENS):
        log.warning(
            "the tokenizer of run %s has no special tokens for %s (a run from before they were added, or "
            "an outside tokenizer): the exported chat template spells them as text",
            sm.run.run,
            ", ".join(t for t in ROLE_TOKENS if t not in role_tokens(tok)),
        )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = sm.model_cfg.seq_length
    hf_tok.save_pretrained(str(out))
    log.info("exported %s (%d tensors, vocab %d)", sm.model_dir, len(tensors), vocab)
