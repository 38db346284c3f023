"""``evaluate_model``: all metrics, stored once and reused, deterministic, and telling trained from untrained."""

from __future__ import annotations

import math

import pytest

from tests.trainer.sft.conftest import TinyRun, fast_eval_config
from trainer import evaluate as ev
from trainer.evaluate import evaluate_model, find_evaluation
from wsm.store import EvalManifest

METRICS = {
    "pretrain_val_loss",
    "sharpness_pretrain",
    "sharpness_pretrain_stderr",
    "sharpness_sft",
    "sharpness_sft_stderr",
    "sft_val_loss_before",
    "sft_val_loss",
    "sft_lr",
    "task_accuracy",
    "task_accuracy/add",
    "task_accuracy/stdlib_doc",
}


@pytest.fixture(scope="module")
def trained_eval(tiny_run: TinyRun) -> EvalManifest:
    return evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config())


def test_evaluation_has_every_metric_and_is_stored(tiny_run: TinyRun, trained_eval: EvalManifest) -> None:
    m = trained_eval.metrics
    assert set(m) >= METRICS, METRICS - set(m)
    assert all(math.isfinite(v) for v in m.values())
    assert trained_eval.model_id == tiny_run.trained
    assert trained_eval.duration_s > 0 and trained_eval.seeds
    assert trained_eval.config["sft"]["batch_size"] == 8
    assert trained_eval.extra["skipped"] == {}
    assert tiny_run.store.list_evals(tiny_run.run, model_id=tiny_run.trained)[0].name == trained_eval.name
    # SFT lowers the held-out SFT loss.
    assert m["sft_val_loss"] < m["sft_val_loss_before"] - 0.5


def test_pretrain_val_loss_matches_the_trainer(tiny_run: TinyRun, trained_eval: EvalManifest) -> None:
    """The same held-out sequences as the trainer's own validation at the final checkpoint."""
    ckpt = tiny_run.store.latest_checkpoint(tiny_run.run)
    assert ckpt is not None and ckpt.extra.get("val_loss") is not None
    assert trained_eval.metrics["pretrain_val_loss"] == pytest.approx(ckpt.extra["val_loss"], abs=1e-4)


def test_second_call_returns_the_stored_record(
    tiny_run: TinyRun, trained_eval: EvalManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed a cached evaluation")

    monkeypatch.setattr(ev, "compute", boom)
    phases: list[str] = []
    again = evaluate_model(
        tiny_run.store,
        tiny_run.run,
        tiny_run.trained,
        fast_eval_config(),
        progress=lambda p, f: phases.append(p),
    )
    assert again.name == trained_eval.name and again.metrics == trained_eval.metrics
    assert phases == ["cached"]
    assert find_evaluation(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config()) == again
    assert find_evaluation(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config(seed=1)) is None


def test_same_evaluation_twice_gives_the_same_numbers(tiny_run: TinyRun, trained_eval: EvalManifest) -> None:
    again = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config(), force=True)
    assert again.metrics == trained_eval.metrics


def test_trained_model_scores_better_than_untrained(tiny_run: TinyRun, trained_eval: EvalManifest) -> None:
    phases: list[tuple[str, float]] = []
    untrained = evaluate_model(
        tiny_run.store,
        tiny_run.run,
        tiny_run.untrained,
        fast_eval_config(),
        progress=lambda p, f: phases.append((p, f)),
    )
    t, u = trained_eval.metrics, untrained.metrics
    assert untrained.model_id == tiny_run.untrained
    assert t["pretrain_val_loss"] < u["pretrain_val_loss"] - 0.5
    assert t["sft_val_loss"] < u["sft_val_loss"]
    fractions = [f for _, f in phases]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cli_prints_and_reuses(
    tiny_run: TinyRun, trained_eval: EvalManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsm.cli import main

    args = [
        "evaluate",
        tiny_run.trained,
        "--store",
        tiny_run.store.url,
        "--set",
        "builtin_train_per_task=24",
        "--set",
        "builtin_valid_per_task=4",
        "--set",
        "builtin_doc_items=40",
        "--set",
        "sft.batch_size=8",
        "--set",
        "sft.lr=3e-3",
        "--set",
        "sharpness.samples=4",
        "--set",
        "sharpness.seq_length=64",
        "--set",
        "max_new_tokens=8",
        "--set",
        "device=cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert trained_eval.name in out and "sft_val_loss" in out


def test_bad_model_dir_is_a_clear_error(tiny_run: TinyRun) -> None:
    with pytest.raises(ValueError, match="not a model dir"):
        evaluate_model(tiny_run.store, tiny_run.run, "runs/tiny/elsewhere/x")
    with pytest.raises(ValueError, match="not in run"):
        evaluate_model(tiny_run.store, "other", tiny_run.trained)


def test_an_evaluation_reads_the_weights_once(tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading (and verifying) a large model is slow: the SFT base copy and the model share one read."""
    import trainer.load
    from trainer.load import resolve

    reads: list[str] = []
    real = trainer.load.load_weights

    def counting(store: object, manifest: object) -> object:
        reads.append(str(getattr(manifest, "dir", manifest)))
        return real(store, manifest)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer.load, "load_weights", counting)
    monkeypatch.setattr(ev, "load_weights", counting)
    sm = resolve(tiny_run.store, tiny_run.run, tiny_run.untrained)
    metrics, _ = ev.compute(tiny_run.store, sm, fast_eval_config(sharpness={"enabled": False}, run_sft=False))
    assert reads == [tiny_run.untrained] and math.isfinite(metrics["pretrain_val_loss"])
