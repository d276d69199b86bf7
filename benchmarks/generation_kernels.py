"""Decode-step weight kernels at batch 1 with FP32 activations, on SmolLM2-135M's shapes: 30 layers x
(q, k, v, o, gate, up, down) with distinct weights + the 49152x576 head, so the weights stream from
memory as in a real decode step (no cache reuse). Each variant is one full step; variants interleaved
after warm-up, median of --rounds. For hosts without native BF16 (BENCHMARKS.md "Text generation").

    python benchmarks/generation_kernels.py --threads 1 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)


def _int8(w):
    import torch

    s = w.abs().amax(1, keepdim=True) / 127
    return torch.round(w / s).clamp(-128, 127).to(torch.int8), s.squeeze(1).contiguous()


def _int4_linear(w, dtype):
    import torch
    import torch.nn as nn

    from torchslim.quant import ao

    lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return ao.int4_weight_only(lin, None, 32, hqq=False, device=torch.device("cpu"))


def variants(ws, names):
    import torch
    import torch.nn.functional as F

    from torchslim import device as dev
    from torchslim.quant import fbgemm

    out = {"fp32 F.linear": [(lambda x, w=w: F.linear(x, w)) for w in ws]}
    if "bf16" in names:
        out["bf16 weights, x->bf16"] = [(lambda x, w=w.bfloat16(): F.linear(x.bfloat16(), w).float()) for w in ws]
    if "fp16" in names:
        out["fp16 weights, x->fp16"] = [(lambda x, w=w.half(): F.linear(x.half(), w).float()) for w in ws]
    if "int8" in names:
        q = [_int8(w) for w in ws]
        out["int8 _weight_int8pack_mm fp32 x"] = [(lambda x, q=q, s=s: torch.ops.aten._weight_int8pack_mm(x, q, s)) for q, s in q]
    if "int4" in names:
        l4 = [_int4_linear(w, torch.bfloat16) for w in ws]
        out["int4 _weight_int4pack_mm_for_cpu, x->bf16"] = [(lambda x, m=m: m(x.bfloat16()).float()) for m in l4]
    if "int4fp32" in names:
        l4 = [_int4_linear(w, torch.float32) for w in ws]
        out["int4 _weight_int4pack_mm_for_cpu fp32 x"] = [(lambda x, m=m: m(x)) for m in l4]
    if "fbgemm8" in names:
        # fbgemm's dynamic INT8 Linear: the activation quantized per tensor on the fly (7-bit where the CPU
        # lacks VNNI: vpmaddubsw saturates), INT8 per-channel weights, INT32 accumulation, FP32 out.
        rr = dev.seven_bit_int8()
        pk = [fbgemm.pack_int8(w) for w in ws]
        out["fbgemm dynamic int8 (x quantized per tensor)"] = [
            (lambda x, p=p: torch.ops.quantized.linear_dynamic(x, p, rr)) for p in pk]
    if "fbgemm16" in names:
        pk = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in ws]
        out["fbgemm fp16 weights, fp32 x"] = [(lambda x, p=p: torch.ops.quantized.linear_dynamic_fp16(x, p)) for p in pk]
    if "intmm" in names:
        q = [_int8(w) for w in ws]
        out["_int_mm, x int8 per token"] = [(lambda x, q=q.t().contiguous().t(), s=s: _int_mm_dyn(x, q, s)) for q, s in q]
    return out


def _int_mm_dyn(x, q, s):
    import torch

    sx = x.abs().amax(-1, keepdim=True) / 127
    xi = torch.round(x / sx).to(torch.int8)
    return torch._int_mm(xi, q.t()).float() * sx * s


def main(argv=None) -> int:
    import torch

    from torchslim import device as dev

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--variants", default="bf16,fp16,int8,int4,int4fp32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ws = [torch.randn(n, k) * 0.02 for _ in range(args.layers) for n, k in SHAPES] + [torch.randn(49152, 576) * 0.02]
    xs = {k: torch.randn(1, k) for k in (576, 1536)}
    fns = variants(ws, args.variants.split(","))

    def step(fs):
        for f, w in zip(fs, ws):
            f(xs[w.shape[1]])

    with torch.no_grad():
        for fs in fns.values():
            step(fs)
            step(fs)
        t = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fs in fns.items():
                t0 = time.perf_counter()
                step(fs)
                t[k].append((time.perf_counter() - t0) * 1e3)
    flags = dev.cpu_flags()
    print(f"threads {args.threads}; avx2 {'avx2' in flags}, fma {'fma' in flags}, f16c {'f16c' in flags}, "
          f"avx512f {'avx512f' in flags}, avx512_bf16 {'avx512_bf16' in flags}, amx {'amx_bf16' in flags}; "
          f"load average {os.getloadavg()}")
    base = statistics.median(t["fp32 F.linear"])
    for k, v in t.items():
        m = statistics.median(v)
        print(f"{k:44s} {m:8.2f} ms/step  {base / m:5.2f}x fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
