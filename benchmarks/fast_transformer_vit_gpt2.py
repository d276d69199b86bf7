"""fast_transformer on ViT and GPT-2 (random weights from the base configs, no downloads): time per
call of the Hugging Face model with stock SDPA attention (transformers 5, attn_implementation="sdpa")
and with fast_transformer, in FP32.

- ViT (ViT-Base/16 at 224x224, 197 tokens): no padding; the fast path is fused SDPA attention
  without the per-layer attention-interface dispatch, so the question is "not slower".
- GPT-2 (124M config) prompt pass, batch of prompts right-padded to a common length: 0% padding
  ("not slower") and ragged batches (the gain from skipping padding).

One process; every round times each model once, in a rotating order, after a warm-up; medians.

    python benchmarks/fast_transformer_vit_gpt2.py            # a few minutes on 2 cores
    python benchmarks/fast_transformer_vit_gpt2.py --quick    # small configs, 3 rounds: checks it runs
    python benchmarks/fast_transformer_vit_gpt2.py --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402


DEVICE, DTYPE = torch.device("cpu"), torch.float32


def fast(model, example):
    from torchslim.inputs import Example
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques.base import Context
    from torchslim.techniques.fast_transformer import FastTransformerConfig

    ctx = Context(device=DEVICE, example=Example(tuple(t.to(DEVICE) for t in example)))
    return apply(copy.deepcopy(model), Recipe((FastTransformerConfig(),)), ctx)


def vit_models(quick: bool):
    import transformers as T

    kw = dict(image_size=64, patch_size=16, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
              intermediate_size=768) if quick else {}
    torch.manual_seed(0)
    sdpa = T.ViTModel(T.ViTConfig(**kw, attn_implementation="sdpa")).eval().to(DEVICE, DTYPE)
    size = sdpa.config.image_size
    return sdpa, fast(sdpa, (torch.randn(1, 3, size, size),)), size


def gpt2_models(quick: bool):
    import transformers as T

    kw = dict(n_embd=192, n_layer=4, n_head=3, n_positions=256) if quick else {}
    torch.manual_seed(0)
    sdpa = T.GPT2Model(T.GPT2Config(**kw, attn_implementation="sdpa")).eval().to(DEVICE, DTYPE)
    return sdpa, fast(sdpa, (torch.ones(1, 4, dtype=torch.long),))


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(models: dict, call, rounds: int) -> dict[str, float]:
    for m in models.values():
        call(m)  # warm-up
    times = {n: [] for n in models}
    names = list(models)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            _sync()
            t0 = time.perf_counter()
            call(models[n])
            _sync()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small configs, 3 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 7, quick 3)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128, help="GPT-2 prompt length (padded)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE, DTYPE
    DEVICE = torch.device(args.device)
    DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    rounds = args.rounds or (3 if args.quick else 7)
    rows = []
    with torch.inference_mode():
        sdpa, fst, size = vit_models(args.quick)
        x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
        err = float((sdpa(pixel_values=x).last_hidden_state - fst(pixel_values=x).last_hidden_state).abs().max())
        med = timed({"sdpa": sdpa, "fast": fst}, lambda m: m(pixel_values=x), rounds)
        rows.append((f"ViT {size}x{size}, batch {args.batch}", "0%", med, err))
        print(rows[-1], file=sys.stderr, flush=True)

        sdpa, fst = gpt2_models(args.quick)
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(0, sdpa.config.vocab_size, (args.batch, args.seq), generator=g).to(DEVICE)
        for label, lo in (("0%", args.seq), ("~25%", args.seq // 2), ("~50%", 1)):
            lens = torch.randint(lo, args.seq + 1, (args.batch,), generator=g)
            mask = (torch.arange(args.seq)[None, :] < lens[:, None]).long().to(DEVICE)
            keep = mask.bool()
            ref = sdpa(input_ids=ids, attention_mask=mask).last_hidden_state
            err = float((ref - fst(input_ids=ids, attention_mask=mask).last_hidden_state)[keep].abs().max())
            med = timed({"sdpa": sdpa, "fast": fst}, lambda m: m(input_ids=ids, attention_mask=mask), rounds)
            pad = f"{label} ({1 - float(mask.float().mean()):.0%})"
            rows.append((f"GPT-2 prompt, batch {args.batch} x {args.seq}", pad, med, err))
            print(rows[-1], file=sys.stderr, flush=True)

    import transformers

    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, {where}, {args.dtype}, medians of "
          f"{rounds} interleaved rounds (ms){' (quick: small configs)' if args.quick else ''}\n")
    print("| model | padding | stock SDPA | fast_transformer | fast vs sdpa | max abs err (real tokens) |")
    print("|---|---|---|---|---|---|")
    for name, pad, med, err in rows:
        print(f"| {name} | {pad} | {med['sdpa']:.1f} | {med['fast']:.1f} | {med['sdpa'] / med['fast']:.2f}x | {err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
