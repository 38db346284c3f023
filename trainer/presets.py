"""Named model shapes, from a 5M-parameter toy for tests and demos to the WSO paper's Llama-3 1B and 8B.

The 1B and 8B rows are Appendix A of the WSO paper (hidden, FFN, layers, heads, KV heads, head
dim, RoPE base); the paper uses the Llama 3 tokenizer (vocab 128,256), which here comes from the
tokenizer actually loaded, so a preset never fixes the vocabulary.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # ~5M parameters with a 4k vocabulary: ~4k tokens/s on 2 CPU cores.
    "tiny": dict(
        num_layers=4,
        hidden_size=256,
        ffn_hidden_size=704,
        num_attention_heads=8,
        num_query_groups=2,
        seq_length=256,
        tie_embeddings=False,
    ),
    # ~20M parameters with an 8k vocabulary: the smallest shape that learns more than n-grams.
    "small": dict(
        num_layers=8,
        hidden_size=384,
        ffn_hidden_size=1024,
        num_attention_heads=6,
        num_query_groups=2,
        seq_length=512,
        tie_embeddings=False,
    ),
    # GPT-2-small-like width with Llama blocks: ~125M parameters with a 32k vocabulary.
    "125m": dict(
        num_layers=12,
        hidden_size=768,
        ffn_hidden_size=2048,
        num_attention_heads=12,
        num_query_groups=4,
        seq_length=2048,
        tie_embeddings=False,
    ),
    # WSO paper Appendix A, "1B" (Llama-3.2-1B shape; Llama 3.2 ties embeddings).
    "1b": dict(
        num_layers=16,
        hidden_size=2048,
        ffn_hidden_size=8192,
        num_attention_heads=32,
        num_query_groups=8,
        seq_length=2048,
        tie_embeddings=True,
    ),
    # WSO paper Appendix A, "8B" (Llama-3.1-8B shape, untied).
    "8b": dict(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_query_groups=8,
        seq_length=2048,
        tie_embeddings=False,
    ),
}


def preset(name: str) -> dict[str, Any]:
    """A copy of the named preset's fields; unknown names list the valid ones."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[key])
