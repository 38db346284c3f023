"""Hutchinson's estimator against quadratics with a known Hessian trace."""

from __future__ import annotations

import torch

from tests.trainer.sft.conftest import micro_model
from trainer.sharpness import TraceEstimate, hutchinson_samples, model_sharpness
from wsm.eval_config import SharpnessConfig


class Quadratic(torch.nn.Module):
    """``f(x, y) = ½ xᵀAx + ½ yᵀBy + xᵀCy``: Hessian ``[[A, C], [Cᵀ, B]]``, trace ``tr A + tr B``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(6, 6, generator=g, dtype=torch.float64)
        self.A = m @ m.T + torch.eye(6, dtype=torch.float64)
        self.B = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
        self.C = torch.randn(6, 3, generator=g, dtype=torch.float64)
        self.x = torch.nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
        self.y = torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.x @ self.A @ self.x + 0.5 * self.y @ self.B @ self.y + self.x @ self.C @ self.y

    @property
    def trace(self) -> float:
        return float(torch.trace(self.A) + torch.trace(self.B))


def test_trace_of_known_hessian_within_standard_error() -> None:
    q = Quadratic()
    values = hutchinson_samples(q, list(q.parameters()), 400, torch.Generator().manual_seed(1))
    est = TraceEstimate.from_samples(values)
    assert est.n == 400 and est.stderr > 0
    assert abs(est.mean - q.trace) < 3 * est.stderr


def test_diagonal_hessian_is_exact() -> None:
    # vᵀDv = tr D for every ±1 vector: zero variance.
    x = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    d = torch.arange(1.0, 6.0, dtype=torch.float64)
    values = hutchinson_samples(lambda: 0.5 * (d * x * x).sum(), [x], 8, torch.Generator().manual_seed(0))
    assert values == [15.0] * 8


def test_seeded_estimates_repeat() -> None:
    q = Quadratic(3)
    a = hutchinson_samples(q, list(q.parameters()), 10, torch.Generator().manual_seed(5))
    b = hutchinson_samples(q, list(q.parameters()), 10, torch.Generator().manual_seed(5))
    assert a == b


def test_megatron_model_double_backward_runs() -> None:
    """The model path: SDPA math kernel and logits cross-entropy support double backward on CPU."""
    model = micro_model(seq_length=16)
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {
        "tokens": tokens,
        "labels": tokens.roll(-1, 1),
        "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).expand(2, 16),
    }
    cfg_s = SharpnessConfig(samples=3, seq_length=16)
    a = model_sharpness(model, [batch], cfg_s, torch.device("cpu"))
    b = model_sharpness(model, [batch], cfg_s, torch.device("cpu"))
    assert a == b and a.n == 3 and torch.isfinite(torch.tensor(a.mean))
