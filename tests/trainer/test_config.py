"""Config validation, overrides and presets: shape errors are caught before megatron sees them."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig, describe_fields, load_config
from trainer.model import padded_vocab_size
from trainer.presets import PRESETS
from trainer.units import parse_tokens


def test_defaults_are_wso_tiny() -> None:
    cfg = load_config(None)
    assert cfg.schedule.style == "wso"
    assert cfg.model.hidden_size == PRESETS["tiny"]["hidden_size"]
    assert cfg.optim.beta1 == 0.9 and cfg.optim.beta2 == 0.95 and cfg.optim.weight_decay == 0.1
    assert cfg.optim.clip_grad == 1.0


@pytest.mark.parametrize("name", ["1b", "8b"])
def test_paper_presets(name: str) -> None:
    cfg = load_config(None, [f"model.preset={name}", "parallel.tensor_parallel=8"])
    assert cfg.model.num_query_groups == 8 and cfg.model.head_dim == (64 if name == "1b" else 128)


def test_explicit_fields_override_the_preset() -> None:
    cfg = load_config(None, ["model.preset=1b", "model.num_layers=2"])
    assert cfg.model.num_layers == 2 and cfg.model.hidden_size == 2048


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.num_attention_heads=5"], "must divide model.hidden_size"),
        (["model.num_query_groups=3"], "must divide model.num_attention_heads"),
        (["parallel.tensor_parallel=4"], "must divide model.num_query_groups"),
        (["micro_batch_size=3"], "must divide global_batch_size"),
        (["checkpoint.save_every=lots"], "is not a token count"),
        (["schedule.style=cosine"], "needs train_tokens"),
        (["optim.lr=-1"], "greater than 0"),
        (["nonsense=1"], "Extra inputs"),
    ],
)
def test_invalid_configs_name_the_problem(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_token_sizes_accept_ints_and_suffixes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.yaml"
    path.write_text("train_tokens: 20000\ncheckpoint:\n  save_every: 2.5k\n")
    cfg = load_config(path)
    assert parse_tokens(cfg.train_tokens or "") == 20000
    assert parse_tokens(cfg.checkpoint.save_every) == 2500


def test_help_lists_every_leaf_field() -> None:
    lines = describe_fields()
    assert any(line.strip().startswith("optim.weight_decay") for line in lines)
    assert all(": " in line for line in lines)
    assert len(lines) > 30
    assert TrainConfig.model_fields["run"].description


def test_vocab_padding_is_tp_aligned() -> None:
    assert padded_vocab_size(1000, 64, 1) == 1024
    assert padded_vocab_size(1000, 64, 2) == 1024
    assert padded_vocab_size(128256, 64, 8) == 128512


def test_packaged_config_by_name() -> None:
    cfg = load_config("demo")
    assert cfg.run == "demo" and cfg.model.preset == "tiny"
    assert parse_tokens(cfg.checkpoint.save_every) % cfg.tokens_per_step == 0, "demo saves on step boundaries"


def test_unknown_config_lists_the_packaged_ones() -> None:
    with pytest.raises(ValueError, match=r"no such file, nor a packaged config \(packaged: demo\)"):
        load_config("nonexistent")
