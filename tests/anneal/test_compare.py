"""Merge against real decay: the arithmetic (anneal/compare.py) and the pairing of a run's models
with their twins (anneal/evidence.py, anneal/pairing.py), on manifests built in memory."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from anneal.compare import NOISE_SIGMAS, Measure, lower_is_better, measure, neighbours, pair, trend_spread
from anneal.evidence import RunEvidence, config_key, twin_key
from anneal.frontier import frontier
from anneal.pairing import comparison
from wsm.store import EvalManifest, ModelManifest, SourceCheckpoint, Window, layout

RUN = "r"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def one(value: float) -> Measure:
    result = measure([value])
    assert result is not None
    return result


# -- arithmetic ----------------------------------------------------------------------------------
def test_measure_mean_sd_and_se() -> None:
    m = measure([3.0, 3.2, 3.4])
    assert m is not None
    assert m.mean == pytest.approx(3.2) and (m.n, m.source) == (3, "eval")
    assert m.sd == pytest.approx(0.2) and m.se == pytest.approx(0.2 / math.sqrt(3))
    single = one(3.0)
    assert single.sd is None and single.se is None
    assert measure([]) is None and measure([math.nan]) is None


def test_gap_and_recovered_share() -> None:
    stats = pair("pretrain_val_loss", one(3.40), one(3.25), one(3.24))
    assert stats.gap_pct == pytest.approx(100 * 0.01 / 3.24)
    assert stats.difference == pytest.approx(0.16)
    assert stats.recovered == pytest.approx(0.15 / 0.16)
    assert stats.lower_is_better is True
    # Whichever way the metric points, recovering all of it is 1.
    acc = pair("task_accuracy", one(0.50), one(0.56), one(0.56))
    assert acc.recovered == pytest.approx(1.0) and acc.lower_is_better is False


def test_missing_sides_give_none_not_numbers() -> None:
    only_merge = pair("x", None, one(1.0), None)
    assert only_merge.gap_pct is None and only_merge.recovered is None and only_merge.within_noise is None
    no_wso = pair("x", None, one(1.0), one(1.1))
    assert no_wso.gap_pct is not None and no_wso.recovered is None
    same = pair("x", one(1.0), one(1.0), one(1.0))
    assert same.recovered is None  # no WSO -> decay difference: no share of it


def test_trend_spread_ignores_the_trend() -> None:
    line = [(t, 5.0 - 0.01 * t) for t in range(5)]
    assert trend_spread(line) == pytest.approx(0.0, abs=1e-12)
    noisy = [(0, 5.0), (1, 4.99 + 0.02), (2, 4.98 - 0.02), (3, 4.97 + 0.02), (4, 4.96)]
    x, y = np.array([p[0] for p in noisy], float), np.array([p[1] for p in noisy])
    residuals = y - np.polyval(np.polyfit(x, y, 1), x)
    assert trend_spread(noisy) == pytest.approx(float(np.sqrt((residuals**2).sum() / (len(x) - 2))))
    assert trend_spread(line[:2]) is None


def test_neighbours_take_k_each_side() -> None:
    points = {t: float(t) for t in (10, 20, 30, 40, 50, 60)}
    assert [t for t, _ in neighbours(points, 40, 2)] == [20, 30, 40, 50, 60]
    assert [t for t, _ in neighbours(points, 60, 2)] == [40, 50, 60]
    assert [t for t, _ in neighbours(points, 35, 1)] == [30, 40]  # end itself unmeasured


def test_noise_flag_from_neighbouring_checkpoints() -> None:
    wso, merge, decay = one(3.400), one(3.395), one(3.396)
    within = pair("loss", wso, merge, decay, spread=0.003)
    assert within.noise == 0.003 and within.noise_from == "checkpoints"
    assert within.within_noise is True  # 0.004 <= 2 x 0.003
    clear = pair("loss", wso, merge, decay, spread=0.001)
    assert clear.within_noise is False  # 0.004 > 2 x 0.001
    assert NOISE_SIGMAS == 2.0


def test_noise_flag_from_seeds_and_the_larger_estimate_wins() -> None:
    wso = measure([3.40, 3.44])  # se 0.02
    decay = measure([3.36, 3.40])  # se 0.02
    stats = pair("loss", wso, one(3.39), decay, spread=0.001)
    assert stats.noise_from == "seeds" and stats.noise == pytest.approx(math.sqrt(2) * 0.02)
    assert stats.within_noise is True  # difference 0.04 <= 2 x 0.028
    assert stats.gap_pct_sd is not None  # the decay's repeats give the gap an error bar
    unknown = pair("loss", one(3.4), one(3.3), one(3.2))
    assert unknown.noise is None and unknown.within_noise is None


def test_metric_directions() -> None:
    assert lower_is_better("pretrain_val_loss") and lower_is_better("sharpness_pretrain")
    assert lower_is_better("task_accuracy") is False and lower_is_better("task_accuracy/arith") is False
    assert lower_is_better("acc_norm") is False  # lm-eval style keys, added later
    assert lower_is_better("sharpness_pretrain_stderr") is None and lower_is_better("something") is None


# -- pairing a run's models -----------------------------------------------------------------------
def anneal(name: str, curve: dict[str, Any], start: int, end: int, step: int = 10) -> ModelManifest:
    sources = [
        SourceCheckpoint(tokens=t, sha256="0" * 64, c=0.1, w=0.5) for t in range(start + step, end + 1, step)
    ]
    return ModelManifest(
        kind="anneal",
        run=RUN,
        name=name,
        tokens=end,
        dtype="float32",
        curve=curve,
        window=Window(start_tokens=start, end_tokens=end),
        sources=sources,
    )


def decay(name: str, curve: str, start: int, end: int, **extra: Any) -> ModelManifest:
    return ModelManifest(
        kind="baseline",
        run=RUN,
        name=name,
        tokens=end,
        dtype="float32",
        branch_tokens=start,
        window=Window(start_tokens=start, end_tokens=end),
        curve={"name": curve, "min_lr_factor": 0.0},
        extra=extra,
    )


def evaluation(model_dir: str, loss: float, seed: int = 0, minute: int = 0, **config: Any) -> EvalManifest:
    return EvalManifest(
        run=RUN,
        name=f"eval-{abs(hash((model_dir, seed, minute, str(config)))):x}",
        model_id=model_dir,
        config={"seed": seed, "sft": {"seed": seed, "lr": 1e-4}, **config},
        metrics={"pretrain_val_loss": loss, "task_accuracy": 0.5},
        created_at=T0 + timedelta(minutes=minute),
    )


def ckpt(tokens: int) -> str:
    return layout.checkpoint_dir(RUN, tokens)


def model(name: str) -> str:
    return layout.model_dir(RUN, name)


VAL = [
    {"tokens": t, "val_loss": 4.0 - 0.001 * t + (0.0005 if t % 20 else -0.0005)} for t in range(10, 101, 10)
]


def test_twins_share_run_window_and_curve() -> None:
    m = anneal("m", {"name": "1-sqrt", "floor": 0.0, "label": "1-sqrt"}, 60, 100)
    assert twin_key(m) == twin_key(decay("d", "minus_sqrt", 60, 100))  # aliases resolve
    assert twin_key(m) != twin_key(decay("d", "1-sqrt", 50, 100))  # another window
    assert twin_key(m) != twin_key(decay("d", "linear", 60, 100))  # another curve
    assert twin_key(anneal("e", {"name": "ema", "alpha": 0.2}, 60, 100)) is None  # no real decay runs ema
    assert config_key(
        {"seed": 1, "sft": {"seed": 2, "lr": 1}, "suite_seed": 3, "device": "cuda"}
    ) == config_key({"seed": 9, "sft": {"seed": 8, "lr": 1}, "suite_seed": 7, "device": "cpu"})


def test_comparison_pairs_pools_seeds_and_flags() -> None:
    merge = anneal("anneal-1-sqrt", {"name": "1-sqrt", "label": "1-sqrt"}, 60, 100)
    lonely = anneal("anneal-linear", {"name": "linear", "label": "linear"}, 60, 100)
    twins = [decay("decay-a", "1-sqrt", 60, 100), decay("decay-b", "1-sqrt", 60, 100)]
    evals = [
        evaluation(ckpt(100), 3.90),
        evaluation(model("anneal-1-sqrt"), 3.72, seed=0),
        evaluation(model("anneal-1-sqrt"), 3.74, seed=1),
        evaluation(model("decay-a"), 3.70),
        evaluation(model("decay-b"), 3.72),
        # another SFT recipe: a different measurement, left out
        evaluation(model("decay-a"), 1.0, minute=1, sft_lr_factor=9),
    ]
    out = comparison(RunEvidence.of(RUN, [merge, lonely, *twins], evals, VAL))
    assert out.unpaired == 1 and out.evals_excluded == 1 and len(out.rows) == 1
    row = out.rows[0]
    assert row.model_id == "r:anneal-1-sqrt" and row.decay_models == ["r:decay-a", "r:decay-b"]
    assert (row.window_start, row.window_end, row.checkpoints, row.interval) == (60, 100, 4, 10)
    loss = row.metrics["pretrain_val_loss"]
    assert loss.merge is not None and loss.merge.mean == pytest.approx(3.73) and loss.merge.n == 2
    assert loss.decay is not None and loss.decay.mean == pytest.approx(3.71) and loss.decay.n == 2
    assert loss.wso is not None and loss.wso.mean == 3.90 and loss.wso.source == "eval"
    assert loss.recovered == pytest.approx(0.17 / 0.19)
    assert loss.within_noise is False  # 0.19 is far above the checkpoints' and the seeds' noise
    assert set(row.metrics) == {"pretrain_val_loss", "task_accuracy"}  # every metric measured


def test_noise_from_neighbours_flags_a_small_difference() -> None:
    merge = anneal("m", {"name": "1-sqrt"}, 60, 100)
    wso = [evaluation(ckpt(t), 4.0 + (0.01 if (t // 10) % 2 else -0.01)) for t in (80, 90, 100)]
    evals = [*wso, evaluation(model("m"), 3.985), evaluation(model("d"), 3.984)]
    out = comparison(RunEvidence.of(RUN, [merge, decay("d", "1-sqrt", 60, 100)], evals, VAL))
    stats = out.rows[0].metrics["pretrain_val_loss"]
    assert stats.wso is not None and stats.wso.source == "eval"
    # The evaluated neighbours zig-zag by 0.02 (not the trainer's, which are measured otherwise).
    assert stats.noise_from == "checkpoints" and stats.noise == pytest.approx(
        trend_spread([(80, 3.99), (90, 4.01), (100, 3.99)])
    )
    assert stats.difference == pytest.approx(0.006) and stats.within_noise is True
    assert not stats.mixed_sources


def test_trainer_losses_stand_in_but_are_not_compared_with_evaluations() -> None:
    merge = anneal("m", {"name": "1-sqrt"}, 60, 100)
    twin = decay("d", "1-sqrt", 60, 100, val_loss=3.8)
    alone = comparison(RunEvidence.of(RUN, [merge, twin], [], VAL)).rows[0].metrics["pretrain_val_loss"]
    assert alone.decay is not None and (alone.decay.mean, alone.decay.source) == (3.8, "trainer")
    assert alone.wso is not None and alone.wso.source == "trainer"
    assert alone.merge is None and alone.gap_pct is None  # the merge is not evaluated yet: no made-up gap
    assert alone.difference == pytest.approx(alone.wso.mean - 3.8)  # trainer beside trainer: comparable
    # The merge evaluated, the twin not: both shown, the gap left out (other samples).
    mixed = comparison(RunEvidence.of(RUN, [merge, twin], [evaluation(model("m"), 3.7)], VAL))
    stats = mixed.rows[0].metrics["pretrain_val_loss"]
    assert stats.merge is not None and stats.decay is not None and stats.mixed_sources
    assert stats.gap_pct is None and stats.recovered is None


def test_frontier_follows_each_variant_along_the_run() -> None:
    models = [
        anneal(f"m{end}", {"name": "1-sqrt", "label": "1-sqrt"}, end - 40, end) for end in (40, 80, 100)
    ]
    models.append(decay("d", "1-sqrt", 60, 100))
    evals = [evaluation(model(f"m{end}"), 3.9 - end / 1000) for end in (40, 80, 100)]
    out = frontier(RunEvidence.of(RUN, models, evals, VAL))
    anneals = [s for s in out.series if s.kind == "anneal"]
    assert len(anneals) == 1 and anneals[0].key == "anneal|1-sqrt|40|10"
    assert [p.tokens for p in anneals[0].points] == [40, 80, 100]
    assert anneals[0].points[-1].metrics["pretrain_val_loss"].mean == pytest.approx(3.8)
    assert [s.kind for s in out.series] == ["anneal", "decay"]
    assert [p.tokens for p in out.trainer] == list(range(10, 101, 10)) and out.wso == []
    assert out.lower_is_better["pretrain_val_loss"] is True


def test_a_benchmark_keeps_its_own_standard_error() -> None:
    """One lm-eval run has no spread over seeds, but lm-eval reports a standard error: it is kept."""
    from anneal.compare import measure

    single = measure([0.41], reported_se=[0.03])
    assert single is not None and single.sd is None and single.reported_se == 0.03
    repeated = measure([0.41, 0.45], reported_se=[0.03, 0.05])
    assert repeated is not None and repeated.sd is not None and repeated.reported_se == pytest.approx(0.04)
    assert measure([0.41]) is not None and measure([0.41]).reported_se is None  # type: ignore[union-attr]
