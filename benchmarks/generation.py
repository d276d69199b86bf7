"""SmolLM2-135M-Instruct generation on this CPU: the generation recipes vs the model's own FP32 eager
generate(), interleaved in one process, batch 1 and a larger batch; TTFT, decode tokens/s,
perplexity on held-out text, greedy agreement. Writes benchmarks/results/generation_cpu_<date>.json
and prints the table (the same search `torchslim optimize --example smollm2` runs).

    python benchmarks/generation.py --threads 2 --rounds 5
    python benchmarks/generation.py --recipes static-cache,int4-g32-wo-bf16+static-cache   # quick

Reference not re-run here: llama.cpp (llama-cpp-python 0.3.36) on the same Q4_1 GGUF reached
48.7 tokens/s (3.6x FP32 eager generate()) on the issue's 2-core AVX-512 VNNI Xeon (no AMX).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    from torchslim.fileio import write_json
    from torchslim.generation.load import load_causal_lm, smollm2_gguf
    from torchslim.generation.report import format_generation_table
    from torchslim.generation.search import GenerationConfig, optimize_generation

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--large-batch", type=int, default=4)
    ap.add_argument("--recipes", default=None, help="comma-separated generation recipe names (default: all applicable)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/generation_cpu_<date>.json)")
    args = ap.parse_args(argv)
    config = GenerationConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens, large_batch=args.large_batch,
                              rounds=args.rounds, threads=args.threads, save_model=False,
                              recipes=tuple(args.recipes.split(",")) if args.recipes else None)
    run = optimize_generation(load_causal_lm(smollm2_gguf()), config, progress=False).to_dict()
    run["load_average"] = os.getloadavg()
    run["reference_not_rerun"] = {"llama.cpp (llama-cpp-python 0.3.36, Q4_1 GGUF, 2-core AVX-512 VNNI Xeon, no AMX)":
                                  {"tokens_per_s": 48.7, "vs_fp32_eager_generate": 3.6, "source": "issue 12"}}
    out = args.out or os.path.join(HERE, "results", f"generation_cpu_{datetime.date.today().isoformat()}.json")
    write_json(out, run)
    print(format_generation_table(run))
    print(f"\nload average during the run: {run['load_average']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
