"""The Llama-style megatron-core ``GPTModel``: one construction for CPU and GPU.

On CPU two megatron pieces assume CUDA (see docs in shared notes): ``DotProductAttention`` takes a
CUDA buffer and ``RotaryEmbedding.get_emb`` moves ``inv_freq`` to the current CUDA device. The
layer spec is the seam: core attention becomes :class:`SDPACoreAttention` (PyTorch's fused SDPA,
which also picks flash kernels on GPU), and RoPE a subclass without the device move. On GPU with
Transformer Engine installed the TE spec (fused norms, TE/flash attention) is used instead.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from trainer.config import ModelConfig

log = logging.getLogger(__name__)


class SDPACoreAttention(MegatronModule):  # type: ignore[misc]
    """Causal core attention on ``F.scaled_dot_product_attention``; megatron hands ``[s, b, heads, dim]``.

    The attention mask is ignored (always causal), so document-level masking is not available.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: Any = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention supports neither packed sequences nor bias")
        seq, batch = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.softmax_scale,
            # megatron passes k/v with num_query_groups heads; SDPA broadcasts them over the queries.
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


class CPURotaryEmbedding(RotaryEmbedding):  # type: ignore[misc]
    """megatron's RoPE without the unconditional move of ``inv_freq`` to CUDA (non-interleaved).

    ``inv_freq`` is a plain attribute in megatron; :func:`follow_module_device` makes it a
    non-persistent buffer, so a model built on the CPU and moved with ``.to("cuda")`` (evaluation
    does that) computes its rotations where its weights are. It stays float32 whatever the model's
    dtype, and moving the model drops megatron's cache of ``forward`` (it would hand back
    embeddings on the old device).
    """

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]

    def _apply(self, fn: Any, recurse: bool = True) -> CPURotaryEmbedding:
        super()._apply(fn, recurse)
        inv_freq = self._buffers.get("inv_freq")
        if inv_freq is not None and inv_freq.dtype != torch.float32:
            self._buffers["inv_freq"] = inv_freq.float()
        cache_clear = getattr(RotaryEmbedding.forward, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
        return self

    def follow_module_device(self) -> None:
        """Turn ``inv_freq`` into a buffer that ``Module.to`` moves (idempotent)."""
        if "inv_freq" not in self._buffers:
            inv_freq = self.__dict__.pop("inv_freq")
            self.register_buffer("inv_freq", inv_freq, persistent=False)


def have_transformer_engine() -> bool:
    """Whether Transformer Engine is importable (its spec is megatron's fast GPU path)."""
    return importlib.util.find_spec("transformer_engine") is not None


def padded_vocab_size(vocab_size: int, multiple: int, tensor_parallel: int = 1) -> int:
    """Embedding rows: the tokenizer's vocabulary rounded up so every TP shard is equal and aligned."""
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step


def transformer_config(
    cfg: ModelConfig, *, tensor_parallel: int = 1, cuda: bool = False, bf16: bool = False
) -> TransformerConfig:
    """megatron's TransformerConfig for the Llama block; fusions that need CUDA kernels stay off on CPU."""
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_std,
        tensor_model_parallel_size=tensor_parallel,
        # CPU initialisation builds each full matrix and slices it, so every TP layout starts from
        # the same weights as TP=1 for a given seed (what the TP-equivalence test relies on).
        use_cpu_initialization=not cuda,
        perform_initialization=True,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        bias_activation_fusion=cuda,
        masked_softmax_fusion=False,
        apply_rope_fusion=cuda and have_transformer_engine(),
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        sequence_parallel=False,
    )


def layer_spec(cuda: bool) -> ModuleSpec:
    """TE spec on GPU when Transformer Engine is installed; otherwise local modules with SDPA attention."""
    if cuda and have_transformer_engine():
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    *,
    seed: int = 1234,
    tensor_parallel: int = 1,
    cuda: bool = False,
    bf16: bool = False,
) -> GPTModel:
    """A freshly initialised GPTModel (this rank's TP shard); ``vocab_size`` is already padded.

    Needs megatron's parallel state (see :func:`trainer.distributed.init_distributed`).
    """
    torch.manual_seed(seed)
    if cuda:
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    config = transformer_config(cfg, tensor_parallel=tensor_parallel, cuda=cuda, bf16=bf16)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(cuda),
        vocab_size=vocab_size,
        max_sequence_length=cfg.seq_length,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
        rotary_percent=1.0,
    )
    if not cuda:
        # Swapping the class keeps the constructed inv_freq and megatron's caching of forward().
        model.rotary_pos_emb.__class__ = CPURotaryEmbedding
        model.rotary_pos_emb.follow_module_device()
    else:
        model.cuda(torch.cuda.current_device())
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of this rank's shard."""
    return sum(p.numel() for p in model.parameters())
