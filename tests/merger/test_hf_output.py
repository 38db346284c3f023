"""`wsm merge -o` of Hugging Face model directories writes a model directory transformers loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsm.cli import main

transformers = pytest.importorskip("transformers")


def _tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["the merged model loads again " * 20],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]),
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)


def _model(directory: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    _tokenizer(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_merged_hf_directories_load_with_transformers(tmp_path: Path) -> None:
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    assert (
        main(
            [
                "merge",
                f"{tmp_path / 'a'}:0.25",
                f"{tmp_path / 'b'}:0.75",
                "-o",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    merged = transformers.AutoModelForCausalLM.from_pretrained(out)
    state = merged.state_dict()
    for name, value in a.items():
        if name == "lm_head.weight" and name not in state:
            continue  # tied
        torch.testing.assert_close(state[name], 0.25 * value + 0.75 * b[name], rtol=1e-6, atol=1e-6)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok.encode("the merged model")).strip() == "the merged model"


def test_plain_safetensors_inputs_copy_nothing(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for i in range(2):
        save_file({"w": torch.full((4,), float(i))}, str(tmp_path / f"c{i}.safetensors"))
    assert (
        main(
            [
                "merge",
                str(tmp_path / "c0.safetensors"),
                str(tmp_path / "c1.safetensors"),
                "-o",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["merge_manifest.json", "model.safetensors"]
