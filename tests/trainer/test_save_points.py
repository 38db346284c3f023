"""Checkpoints land on the first step at or past each multiple of save_every, with no drift."""

from __future__ import annotations

from types import SimpleNamespace

from trainer.loop import Trainer


def _save_steps(tokens_per_step: int, save_every: int, steps: int) -> list[int]:
    fake = SimpleNamespace(tokens_per_step=tokens_per_step, save_every_tokens=save_every)
    return [s for s in range(1, steps + 1) if Trainer._crossed_save_point(fake, s)]  # type: ignore[arg-type]


def test_even_grid_saves_every_n_steps() -> None:
    assert _save_steps(2048, 122_880, 200) == [60, 120, 180]


def test_uneven_grid_stays_within_one_step_of_each_multiple() -> None:
    tokens_per_step, save_every = 2048, 200_000
    steps = _save_steps(tokens_per_step, save_every, 5000)
    assert len(steps) == 5000 * tokens_per_step // save_every
    for k, step in enumerate(steps, start=1):
        tokens = step * tokens_per_step
        assert k * save_every <= tokens < k * save_every + tokens_per_step


def test_next_save_matches_the_actual_save() -> None:
    fake = SimpleNamespace(tokens_per_step=2048, save_every_tokens=200_000)
    fake._next_save_tokens = lambda s: Trainer._next_save_tokens(fake, s)  # type: ignore[arg-type]
    assert fake._next_save_tokens(0) == 98 * 2048
    assert fake._next_save_tokens(98) == 196 * 2048  # 400k falls inside step 196
    assert _save_steps(2048, 200_000, 200) == [98, 196]
