"""``wsm evaluate DIR`` and ``wsm export DIR``: a Hugging Face Llama directory (an export, a mergekit
output) read back in the context of a run, and everything wsm cannot read refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from trainer.evaluate import evaluate_model
from trainer.load import build_stored_model, load_weights, resolve
from wsm.cli import main


@pytest.fixture(scope="module")
def exported(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained checkpoint as ``wsm export`` writes it."""
    from trainer.export import export_hf

    return export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path_factory.mktemp("hf") / "export")


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_hf_dir_loads_the_same_weights(tiny_run: TinyRun, exported: Path) -> None:
    """The inverse mapping: every megatron tensor of the checkpoint comes back from its export exactly
    (the padded vocabulary rows, which the export cuts, aside)."""
    ours = load_weights(tiny_run.store, resolve(tiny_run.store, tiny_run.run, tiny_run.trained).manifest)
    sm = resolve(tiny_run.store, tiny_run.run, f"hf:{exported}")
    theirs = load_weights(tiny_run.store, sm.manifest)
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        assert torch.equal(tensor, ours[name][: tensor.shape[0]]), name
    model = build_stored_model(tiny_run.store, sm, torch.device("cpu"))  # loads strictly
    assert model.embedding.word_embeddings.weight.shape[0] == sm.vocab_size


def test_evaluate_an_export_scores_like_its_checkpoint(
    tiny_run: TinyRun, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fast_eval_config(run_sft=False, sharpness={"enabled": False})
    stored = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, config)
    path = Path(tiny_run.cache_dir).parent / "eval.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    # No --run: the export's config names its run.
    code = main(["evaluate", str(exported), "--store", tiny_run.store.url, "--config", str(path), "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_id"] == f"hf:{exported}"
    # The same held-out sequences; only the softmax over the checkpoint's padded rows differs.
    assert record["metrics"]["pretrain_val_loss"] == pytest.approx(
        stored.metrics["pretrain_val_loss"], rel=1e-3
    )
    assert [e.model_id for e in tiny_run.store.list_evals(tiny_run.run, model_id=f"hf:{exported}")] == [
        f"hf:{exported}"
    ]
    # Cached by content: asked again, the stored record comes back.
    assert (
        main(["evaluate", str(exported), "--store", tiny_run.store.url, "--config", str(path), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["name"] == record["name"]


def test_evaluation_cache_follows_the_weights(tiny_run: TinyRun, exported: Path, tmp_path: Path) -> None:
    config = fast_eval_config(run_sft=False, sharpness={"enabled": False})
    copy = _copy(exported, tmp_path / "copy")
    first = evaluate_model(tiny_run.store, tiny_run.run, f"hf:{copy}", config)
    weights = load_file(str(copy / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    second = evaluate_model(tiny_run.store, tiny_run.run, f"hf:{copy}", config)
    assert second.name != first.name
    assert second.metrics["pretrain_val_loss"] != first.metrics["pretrain_val_loss"]


def test_export_an_hf_dir_again(tiny_run: TinyRun, exported: Path, tmp_path: Path) -> None:
    """A directory without tokenizer (mergekit without --copy-tokenizer) gets the run's tokenizer and
    chat template, and its weights come through unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bare = _copy(exported, tmp_path / "bare")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    out = tmp_path / "again"
    assert main(["export", str(bare), "--hf", str(out), "--store", tiny_run.store.url]) == 0
    before, after = load_file(str(exported / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    AutoModelForCausalLM.from_pretrained(str(out))


def _refusal(tiny_run: TinyRun, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["evaluate", *args, "--store", tiny_run.store.url])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_hf_dir_without_a_run_names_the_flag(
    tiny_run: TinyRun, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = _copy(exported, tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    del config["wsm_run"]
    (merged / "config.json").write_text(json.dumps(config))
    assert "--run RUN (runs: tiny)" in _refusal(tiny_run, capsys, str(merged))
    assert "no run 'nope'" in _refusal(tiny_run, capsys, str(merged), "--run", "nope")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
            "architecture MistralForCausalLM",
        ),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling"),
        ({"num_hidden_layers": 3}, "no tensor 'model.layers.2.self_attn.q_proj.weight'"),
        ({"vocab_size": 16}, "smaller than the tokenizer of run 'tiny' (1024 tokens)"),
        ({"max_position_embeddings": 16}, "shorter than the sequence length of run 'tiny' (128)"),
    ],
)
def test_what_wsm_cannot_read_is_one_line(
    tiny_run: TinyRun,
    exported: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    expected: str,
) -> None:
    broken = _copy(exported, tmp_path / "broken")
    _edit_config(broken, **change)
    assert expected in _refusal(tiny_run, capsys, str(broken), "--set", "run_sft=false")


def test_unreadable_weights_and_tokenizers_are_one_line(
    tiny_run: TinyRun, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickled = _copy(exported, tmp_path / "pickled")
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert "wsm reads safetensors only" in _refusal(tiny_run, capsys, str(pickled))

    other = _copy(exported, tmp_path / "other-tokenizer")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = list(vocab)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    assert "differs from the tokenizer of run 'tiny'" in _refusal(tiny_run, capsys, str(other))

    assert "not a Hugging Face model directory (no config.json)" in _refusal(tiny_run, capsys, str(tmp_path))


def test_weights_changed_after_hashing_are_refused(tiny_run: TinyRun, exported: Path, tmp_path: Path) -> None:
    """The record names the hash taken when the directory was opened: a file rewritten since is not
    read as if it were the same."""
    copy = _copy(exported, tmp_path / "copy")
    sm = resolve(tiny_run.store, tiny_run.run, f"hf:{copy}")
    weights = load_file(str(copy / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.safetensors changed after it was hashed"):
        load_weights(tiny_run.store, sm.manifest)
