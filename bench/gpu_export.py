"""Export a stored model with ``wsm export --hf`` and compare transformers' logits with ours on CUDA.

    python bench/gpu_export.py --store ./wsm-store --model demo/latest --out /tmp/hf

Ours: the evaluation model (built on the CPU in fp32 from the stored weights, moved to the GPU).
Theirs: ``LlamaForCausalLM.from_pretrained`` of the export, fp32 and bf16. Prints max |Δ| of the
logits over the real vocabulary, the agreement of the argmax, and the timings, as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", required=True, help="RUN/latest, RUN/TOKENS, a store dir, ...")
    ap.add_argument("--out", required=True, help="empty or absent output directory")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a dry run)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from transformers import LlamaForCausalLM

    from trainer.eval_cli import parse_model_spec
    from trainer.export import export_hf
    from trainer.load import build_stored_model, resolve
    from wsm.store import open_store

    store = open_store(args.store)
    run, model_dir = parse_model_spec(store, args.model)
    t = time.perf_counter()
    out = export_hf(store, run, model_dir, args.out)
    export_s = time.perf_counter() - t
    sm = resolve(store, run, model_dir)
    t = time.perf_counter()
    device = torch.device(args.device)
    ours = build_stored_model(store, sm, device)
    build_s = time.perf_counter() - t
    seq = min(args.seq, sm.model_cfg.seq_length)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, sm.vocab_size, (args.batch, seq), generator=gen).to(device)
    positions = torch.arange(seq, device=device).expand(args.batch, seq)
    with torch.no_grad():
        want = ours(tokens, positions, None)[..., : sm.vocab_size].float()
    figures: dict[str, object] = {
        "model_dir": model_dir,
        "export_s": round(export_s, 2),
        "build_ours_s": round(build_s, 2),
        "logits_shape": list(want.shape),
    }
    for dtype in (torch.float32, torch.bfloat16):
        t = time.perf_counter()
        hf = LlamaForCausalLM.from_pretrained(str(out), dtype=dtype).to(device).eval()
        load_s = time.perf_counter() - t
        with torch.no_grad():
            got = hf(input_ids=tokens).logits.float()
        name = str(dtype).removeprefix("torch.")
        figures[f"hf_{name}_load_s"] = round(load_s, 2)
        figures[f"hf_{name}_max_abs_diff"] = float((got - want).abs().max())
        figures[f"hf_{name}_argmax_agreement"] = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        del hf
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
