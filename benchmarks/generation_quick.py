"""A quick, direct comparison of named generation recipes on SmolLM2-135M-Instruct against FP32 eager
generate(): first call, greedy agreement, perplexity, then TTFT and decode interleaved in one process.

    python benchmarks/generation_quick.py --threads 2 --rounds 5 \
        --recipes int4-g32-wo-bf16-head8+static-cache+compile,int4-g32-wo-bf16-head8-prefillbf16+static-cache+compile
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    import torch

    from torchslim.generation import measure, quality
    from torchslim.generation.load import load_causal_lm, smollm2_gguf
    from torchslim.generation.runner import timed_generate
    from torchslim.generation.search import by_name, prompt_ids
    from torchslim.recipes import apply
    from torchslim.techniques import Context

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--recipes", required=True, help="comma-separated generation recipe names")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_causal_lm(smollm2_gguf())
    model, tok, cpu = lm.model.eval(), lm.tokenizer, torch.device("cpu")
    ids = prompt_ids(tok, list(quality.PROMPTS), args.prompt_len, args.batch_size)
    text = quality.text_tokens(tok, 512)
    prompts = [tok(p, return_tensors="pt").input_ids for p in quality.PROMPTS[:4]]
    gens = {"baseline": timed_generate(model)}
    ref = [gens["baseline"](p, 32).tokens for p in prompts]
    print(f"baseline: perplexity {quality.perplexity(model, text):.2f}", flush=True)
    with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
        for recipe in by_name(args.recipes.split(","), cpu):
            m = apply(copy.deepcopy(model), recipe, Context(device=cpu, example=None))
            gen = timed_generate(m)
            first_ms, _ = measure.first_call(gen, ids, args.new_tokens)
            agree = quality.agreement([gen(p, 32).tokens for p in prompts], ref)["greedy_agreement"]
            print(f"{recipe.name}: first call {first_ms / 1000:.1f} s, agreement {agree:.0%}, "
                  f"perplexity {quality.perplexity(m, text):.2f}", flush=True)
            gens[recipe.name] = gen
        before = os.getloadavg()
        samples = measure.interleaved(gens, ids, args.new_tokens, rounds=args.rounds)
    base = measure.summary(samples["baseline"], args.batch_size, args.new_tokens)
    print(f"load average before/after timing: {before} / {os.getloadavg()}")
    for name, s in samples.items():
        x = measure.summary(s, args.batch_size, args.new_tokens)
        print(f"{name:58s} TTFT {x['ttft_ms']:8.1f} ms x{base['ttft_ms'] / x['ttft_ms']:.2f}   "
              f"decode {x['decode_ms_per_token']:7.2f} ms/tok x{base['decode_ms_per_token'] / x['decode_ms_per_token']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
