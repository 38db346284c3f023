"""``wsm export``: the HF Llama directory loads in transformers and its logits match megatron's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer.sft.conftest import TinyRun
from trainer.chat import Message, render_text
from trainer.config import ModelConfig
from trainer.distributed import init_distributed
from trainer.export import to_hf_state_dict
from trainer.load import build_stored_model, resolve
from trainer.model import build_model


def _hf_logits(
    model_dir: Path | None, tokens: torch.Tensor, *, config: dict | None = None, state: dict | None = None
) -> torch.Tensor:
    from transformers import LlamaConfig, LlamaForCausalLM

    if model_dir is not None:
        hf = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    else:
        hf = LlamaForCausalLM(LlamaConfig(**config))
        hf.load_state_dict(state, strict=True)
    with torch.no_grad():
        return hf.eval()(input_ids=tokens).logits


def test_export_round_trips_through_transformers(tiny_run: TinyRun, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from wsm.cli import main

    out = tmp_path / "hf"
    assert main(["export", f"{tiny_run.run}/latest", "--hf", str(out), "--store", tiny_run.store.url]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    sm = resolve(tiny_run.store, tiny_run.run, tiny_run.trained)
    ours = build_stored_model(tiny_run.store, sm, torch.device("cpu"))
    tokens = torch.randint(0, sm.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(tokens, torch.arange(48).expand(2, 48), None)[..., : sm.vocab_size]
    got = _hf_logits(out, tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["rms_norm_eps"] == sm.model_cfg.norm_epsilon
    # The tokenizer carries the chat template and renders exactly what SFT trained on.
    tok = AutoTokenizer.from_pretrained(str(out))
    msgs = [Message("user", "What is 2 + 2?"), Message("assistant", "4")]
    rendered = tok.apply_chat_template([m.__dict__ for m in msgs], tokenize=False)
    assert rendered == render_text(msgs, tok.eos_token)
    assert tok.encode("hello world", add_special_tokens=False) == sm.tokenizer().encode("hello world").ids


@pytest.mark.parametrize("tied", [True, False])
def test_conversion_matches_for_gqa_and_tied_embeddings(tied: bool) -> None:
    init_distributed(1)
    cfg = ModelConfig(
        preset=None,
        num_layers=2,
        hidden_size=48,
        ffn_hidden_size=80,
        num_attention_heads=6,
        num_query_groups=3,
        seq_length=32,
        tie_embeddings=tied,
        norm_epsilon=1e-6,
        rotary_base=500,
    )
    model = build_model(cfg, 128, seed=3).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    vocab = 120  # fewer real tokens than padded rows
    from trainer.export import hf_config

    config = hf_config(cfg, vocab, 0, None, "float32")
    config = {
        k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "rope_theta")
    }
    tokens = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens, torch.arange(20).expand(2, 20), None)[..., :vocab]
    state = to_hf_state_dict(weights, cfg, vocab)
    if tied:
        # The in-memory module still lists the tied head as a key; from_pretrained ties it itself.
        assert "lm_head.weight" not in state
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    got = _hf_logits(None, tokens, config=config, state=state)
    assert (got - expected).abs().max().item() < 1e-4


def test_failed_export_leaves_nothing_and_a_full_target_is_refused(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.export as export

    def broken_tokenizer(path: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(export, "hf_tokenizer", broken_tokenizer)
    with pytest.raises(OSError, match="disk full"):
        export.export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == [], "no partial export, no staging directory"

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        export.export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_export_has_ordinary_permissions(tiny_run: TinyRun, tmp_path: Path) -> None:
    import stat

    from trainer.export import export_hf

    out = export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path / "hf")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_role_markers_are_special_tokens_of_the_export(tiny_run: TinyRun, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.export import export_hf
    from trainer.sft_data import encode
    from trainer.tokenizer import ROLE_TOKENS

    out = export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(out))
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    for marker in ROLE_TOKENS:
        assert marker in tok.all_special_tokens
        [marker_id] = tok.encode(marker, add_special_tokens=False)
        assert marker_id < vocab and marker_id in tok.all_special_ids
    msgs = [Message("system", "Be brief."), Message("user", "What is 2 + 2?"), Message("assistant", "4")]
    ids = tok.apply_chat_template([m.__dict__ for m in msgs], tokenize=True, return_dict=False)
    # The template's markers are the very ids SFT trained on, and decoders can drop them.
    assert list(ids) == list(
        encode(resolve(tiny_run.store, tiny_run.run, tiny_run.trained).tokenizer(), msgs, tok.eos_token).ids
    )
    assert "<|user|>" not in tok.decode(ids, skip_special_tokens=True)
