"""Evaluating an external Megatron run through wsm's megatron-core model (issue 14, item 6).

The reference is megatron-core's own ``dist_checkpointing.load`` into a GPTModel: wsm's road
(saved arguments -> ModelConfig, DCP read by byte range, stacked layers split per layer) must give
exactly its parameters. Runs the saved arguments do not describe fail with one line naming why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anneal import external
from merger import store_io
from tests import external_run
from tests.conftest import make_settings
from theory import CurveSpec
from trainer.config import ModelConfig
from trainer.evaluate import evaluate_model
from trainer.external import config_from_args
from trainer.load import load_run_model, resolve
from trainer.weights import named_parameters
from wsm.eval_config import EvalConfig, SharpnessConfig
from wsm.store import Store, layout

T = external_run.TOKENS_PER_ITERATION


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path]:
    root = tmp_path_factory.mktemp("external-eval")
    source = external_run.copy_run(root / "run", external_run.ITERATIONS)
    tokenizer = external_run.char_tokenizer(root / "tokenizer.json")
    store = Store(str(root / "store"), settings=make_settings())
    external.register(store, "ext", str(source), tokenizer=str(tokenizer))
    return store, source


def _args() -> dict[str, object]:
    """The arguments Megatron-LM saved with the fixture (common.pt, read without importing Megatron-LM)."""
    from merger.formats.dcp import summarize

    args = summarize(str(external_run.megatron_run() / "iter_0000010")).megatron["args"]
    assert isinstance(args, dict)
    return args


def test_saved_arguments_become_the_model_config() -> None:
    cfg, padded = config_from_args(_args(), "iter_0000010")
    assert cfg == ModelConfig(preset=None, **external_run.dcp_fixtures.TINY, tie_embeddings=False)
    assert padded == external_run.dcp_fixtures.VOCAB


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalization": "LayerNorm"}, "normalization=LayerNorm (wsm's model uses RMSNorm)"),
        ({"swiglu": False}, "swiglu=False"),
        ({"position_embedding_type": "learned_absolute"}, "position_embedding_type=learned_absolute"),
        ({"add_bias_linear": True}, "add_bias_linear=True"),
        ({"num_experts": 8}, "num_experts=8"),
        ({"kv_channels": 32}, "kv_channels=32"),
        (
            {"padded_vocab_size": None, "ffn_hidden_size": None},
            "do not record ffn_hidden_size, padded_vocab_size",
        ),
    ],
)
def test_unsupported_or_missing_arguments_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(
        ValueError, match=r"^iter_0000010: not a model wsm's megatron-core model can evaluate"
    ) as e:
        config_from_args({**_args(), **change}, "iter_0000010")
    assert message in str(e.value)


def test_checkpoint_is_the_megatron_model(registered: tuple[Store, Path]) -> None:
    """The checkpoint read in place, split per layer, loads into wsm's model as megatron-core loads it."""
    store, source = registered
    model = load_run_model(store, "ext", tokens=20 * T)
    ref = external_run.reference_model(source / "iter_0000020")
    mine, theirs = named_parameters(model), named_parameters(ref)
    assert sorted(mine) == sorted(theirs)
    for name, p in theirs.items():
        assert torch.equal(mine[name], p.float()), name
    tokens = torch.randint(0, 90, (2, 16))
    positions = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        got = model(tokens, positions, None)
        want = ref.float()(tokens, positions, None)
    torch.testing.assert_close(got, want)


def _short_suite(root: Path) -> Path:
    """An SFT suite whose answers fit the fixture's 32-token context."""
    suite = root / "suite"
    suite.mkdir(exist_ok=True)
    words = ["yes", "no", "red", "blue", "cat", "dog", "sun", "sea"]
    for split, n in (("train", 8), ("valid", 8)):
        lines = [json.dumps({"instruction": f"Say {w}", "output": w}) for w in words[:n]]
        (suite / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return suite


def test_evaluation_runs_on_the_external_checkpoint(registered: tuple[Store, Path], tmp_path: Path) -> None:
    store, _ = registered
    config = EvalConfig(
        suite=str(_short_suite(tmp_path)),
        run_sft=False,
        sharpness=SharpnessConfig(samples=2, seq_length=16, batches=1),
        sharpness_on=["pretrain", "sft"],
        device="cpu",
        eval_batch_size=4,
    )
    record = evaluate_model(store, "ext", layout.checkpoint_dir("ext", 40 * T), config)
    assert set(record.metrics) == {"sharpness_sft", "sharpness_sft_stderr"}
    assert all(torch.isfinite(torch.tensor(v)) for v in record.metrics.values())
    # wsm knows no held-out split of an external corpus: said so, not measured on something else.
    assert record.extra["skipped"]["pretrain"] == "the run has no held-out split"
    assert evaluate_model(store, "ext", layout.checkpoint_dir("ext", 40 * T), config).name == record.name


def test_annealed_model_is_evaluated_through_megatron_core(registered: tuple[Store, Path]) -> None:
    external_run.require_megatron_merge()
    store, source = registered
    selection = store_io.select(store, "ext", CurveSpec(name="1-sqrt"), 30 * T)
    model, _ = store_io.publish_merge(store, store_io.plan_selection(store, selection))
    loaded = named_parameters(load_run_model(store, "ext", model=model.name))
    refs = [external_run.reference_params(source / f"iter_{t // T:07d}") for t in selection.tokens]
    for name, got in loaded.items():
        want = sum(c * r[name].double() for c, r in zip(selection.weights, refs, strict=True))
        torch.testing.assert_close(got, want.to(torch.bfloat16).float(), rtol=2**-7, atol=1e-6)
    assert resolve(store, "ext", model.dir).model_cfg.num_layers == 2


def test_clear_errors_before_evaluation(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"), settings=make_settings())
    source = external_run.copy_run(tmp_path / "run", (10,))
    external.register(store, "bare", str(source))
    with pytest.raises(ValueError, match=r"run 'bare' has no tokenizer registered.*--tokenizer PATH"):
        resolve(store, "bare", layout.checkpoint_dir("bare", 10 * T))
    common = source / "iter_0000010" / "common.pt"
    state = torch.load(common, weights_only=False)
    state["args"].normalization = "LayerNorm"
    torch.save(state, common)
    tokenizer = external_run.char_tokenizer(tmp_path / "tokenizer.json")
    external.register(store, "layernorm", str(source), tokenizer=str(tokenizer))
    with pytest.raises(ValueError, match=r"normalization=LayerNorm \(wsm's model uses RMSNorm\)"):
        resolve(store, "layernorm", layout.checkpoint_dir("layernorm", 10 * T))
    titan = external_run.dcp_fixtures.cached("torchtitan", external_run.dcp_fixtures.torchtitan_run)
    external.register(store, "titan", str(titan), tokens_per_step=1000, tokenizer=str(tokenizer))
    with pytest.raises(ValueError, match="is a torchtitan run: its checkpoints carry no model arguments"):
        resolve(store, "titan", layout.checkpoint_dir("titan", 100_000))
