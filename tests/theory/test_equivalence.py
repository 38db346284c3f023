"""The identity behind Theorem 3.1, and the numeric experiment it promises.

1. For any parameters and updates, the c-weighted merge of the iterates is θ_0 − Σ w_i g_i.
2. SGD on a noisy least-squares problem: merging constant-LR checkpoints with a decay curve lands
   far closer to a run that really decayed its LR than the plain constant-LR iterate does.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import CurveSpec, merge_weights_from_decay, weights_for_grid


@settings(max_examples=60)
@given(
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_merge_of_iterates_equals_decayed_update_sum(k: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = np.sort(rng.uniform(0, 1, size=k))[::-1]
    c = merge_weights_from_decay(w)
    theta0 = rng.normal(size=dim)
    updates = rng.normal(size=(k, dim))
    iterates = theta0 - np.concatenate([np.zeros((1, dim)), np.cumsum(updates, axis=0)])
    merged = c @ iterates
    decayed = theta0 - w @ updates
    np.testing.assert_allclose(merged, decayed, rtol=0, atol=1e-12 * max(1.0, np.abs(iterates).max()) * k)


def _noisy_least_squares(
    seed: int, runs: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    curvature = np.linspace(0.2, 1.0, dim)  # diagonal Hessian of 0.5·Σ h_i (θ_i − θ*_i)²
    theta = rng.normal(size=(runs, dim)) * 3.0
    return curvature, theta, rng


def _loss(curvature: np.ndarray, theta: np.ndarray) -> float:
    return float(np.mean(0.5 * (theta**2 * curvature).sum(axis=1)))


@pytest.mark.parametrize("curve", ["1-sqrt", "linear", "cosine"])
def test_merge_tracks_a_real_decay_on_noisy_sgd(curve: str) -> None:
    runs, dim, lr, noise = 400, 16, 0.2, 1.0
    stable_steps, interval, count = 400, 25, 8
    window = interval * count
    curvature, theta, rng = _noisy_least_squares(0, runs, dim)
    for _ in range(stable_steps):
        theta = theta - lr * (curvature * theta + noise * rng.normal(size=theta.shape))

    # Both branches start at the window start and see the same gradient noise.
    noise_draws = rng.normal(size=(window, runs, dim))
    spec = CurveSpec(curve)
    constant, decayed, checkpoints = theta.copy(), theta.copy(), []
    for step in range(window):
        constant = constant - lr * (curvature * constant + noise * noise_draws[step])
        factor = float(spec.decay_at([step / window])[0])
        decayed = decayed - lr * factor * (curvature * decayed + noise * noise_draws[step])
        if (step + 1) % interval == 0:
            checkpoints.append(constant.copy())

    weights = weights_for_grid(spec, count).c
    merged = np.tensordot(weights, np.stack(checkpoints), axes=1)

    loss_constant, loss_decayed, loss_merged = (_loss(curvature, t) for t in (constant, decayed, merged))
    gap_merge = abs(loss_merged - loss_decayed)
    gap_constant = abs(loss_constant - loss_decayed)
    # Observed (seed 0): constant-LR iterate 0.862; decayed vs merged: 1-sqrt 0.121 vs 0.181,
    # linear 0.156 vs 0.126, cosine 0.162 vs 0.155. The merge closes 92%, 96% and 99% of the gap.
    assert loss_decayed < 0.5 * loss_constant, "the decay must matter in this set-up"
    assert gap_merge < 0.15 * gap_constant, (loss_constant, loss_decayed, loss_merged)
