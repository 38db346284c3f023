"""Evaluation and export on CUDA: runs only where CUDA is available.

The evaluation model is built on the CPU (local spec, fp32) and moved to the GPU, where SFT runs
under bf16 autocast and sharpness takes double backward through SDPA's math kernel. The numbers
that do not depend on SFT precision match the CPU evaluation of the same checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.trainer.sft.conftest import TinyRun, fast_eval_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_evaluation_on_cuda_matches_the_cpu_where_it_should(tiny_run: TinyRun) -> None:
    from trainer.evaluate import evaluate_model

    cpu = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config())
    gpu = evaluate_model(tiny_run.store, tiny_run.run, tiny_run.trained, fast_eval_config(device="cuda"))
    assert gpu.extra["device"].startswith("cuda") and gpu.extra["skipped"] == {}
    assert set(gpu.metrics) == set(cpu.metrics)
    assert all(math.isfinite(v) for v in gpu.metrics.values())
    # fp32 forward and the same Rademacher vectors on both devices.
    assert gpu.metrics["pretrain_val_loss"] == pytest.approx(cpu.metrics["pretrain_val_loss"], abs=1e-3)
    assert gpu.metrics["sft_val_loss_before"] == pytest.approx(cpu.metrics["sft_val_loss_before"], abs=1e-3)
    for where in ("pretrain", "sft"):
        assert gpu.metrics[f"sharpness_{where}"] == pytest.approx(cpu.metrics[f"sharpness_{where}"], rel=2e-2)
    # SFT runs under bf16 autocast on CUDA: it must still learn.
    assert gpu.metrics["sft_val_loss"] < gpu.metrics["sft_val_loss_before"] - 0.5


def test_export_logits_match_on_cuda(tiny_run: TinyRun, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from trainer.export import export_hf
    from trainer.load import build_stored_model, resolve

    out = export_hf(tiny_run.store, tiny_run.run, tiny_run.trained, tmp_path / "hf")
    sm = resolve(tiny_run.store, tiny_run.run, tiny_run.trained)
    ours = build_stored_model(tiny_run.store, sm, torch.device("cuda"))
    hf = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).cuda().eval()
    tokens = torch.randint(0, sm.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        expected = ours(tokens, torch.arange(96, device="cuda").expand(2, 96), None)[..., : sm.vocab_size]
        got = hf(input_ids=tokens).logits
    assert (got - expected).abs().max().item() < 1e-3
