"""Long prompts and batches (issue 25 item 3): SmolLM2-135M-Instruct, a generation recipe against the
model's own FP32 eager generate() at several prompt lengths (time to first token: prefill is
compute-bound, so BF16/VNNI/AMX matter there, not weight bytes) and batch sizes (decode tokens/s),
each shape one generation search limited to that recipe (`optimize_generation`, interleaved timing in
one process, perplexity and greedy agreement checked as in every run).

    PYTHONPATH=. python benchmarks/generation_shapes.py [--recipe NAME] [--prompts 128,512,2048] [--batches 1,4,16]

Writes benchmarks/results/generation_shapes_<tier>_<date>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DEFAULT_RECIPE = "int4-g32-wo-bf16-head8-prefillbf16+static-cache+compile"


def one(lm, recipe: str, prompt_len: int, batch: int, new_tokens: int, rounds: int, threads: int) -> dict:
    from torchslim.generation.search import GenerationConfig, optimize_generation

    cfg = GenerationConfig(recipes=(recipe,), prompt_len=prompt_len, batch_size=batch, large_batch=0,
                           new_tokens=new_tokens, rounds=rounds, threads=threads, time_budget=0,
                           out=tempfile.mkdtemp(prefix="torchslim-shapes-"), save_model=False)
    t0 = time.perf_counter()
    run = optimize_generation(lm, cfg, progress=False)
    rows = {r.name: r for r in run.recipes}
    base, mine = rows["baseline"], rows.get(recipe)
    return {"prompt_len": prompt_len, "batch": batch, "new_tokens": new_tokens,
            "baseline_ttft_ms": base.ttft_ms, "baseline_decode_tok_s": base.decode_tokens_per_s,
            "ttft_ms": mine.ttft_ms if mine else None, "decode_tok_s": mine.decode_tokens_per_s if mine else None,
            "ttft_speedup": mine.ttft_speedup if mine else None, "decode_speedup": mine.decode_speedup if mine else None,
            "ppl_increase_pct": mine.ppl_increase_pct if mine else None, "status": mine.status if mine else "missing",
            "reason": (mine.reason or "")[:160] if mine else "", "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    from torchslim import device as dev
    from torchslim.generation.load import load_causal_lm, smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--prompts", default="128,512,2048", help="prompt lengths, at batch 1")
    ap.add_argument("--batches", default="1,4,16", help="batch sizes, at the first prompt length")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lm = load_causal_lm(smollm2_gguf())
    prompts = [int(p) for p in args.prompts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    shapes = [(p, 1) for p in prompts] + [(prompts[0], b) for b in batches if b != 1]
    caps = dev.capabilities()
    rows = []
    print("| prompt | batch | baseline TTFT ms | recipe TTFT ms | TTFT x | baseline tok/s | recipe tok/s | decode x | ppl | status |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for p, b in shapes:
        r = one(lm, args.recipe, p, b, args.new_tokens, args.rounds, args.threads)
        rows.append(r)
        f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        print(f"| {p} | {b} | {f(r['baseline_ttft_ms'], 1)} | {f(r['ttft_ms'], 1)} | {f(r['ttft_speedup'])} | "
              f"{f(r['baseline_decode_tok_s'], 1)} | {f(r['decode_tok_s'], 1)} | {f(r['decode_speedup'])} | "
              f"{f(r['ppl_increase_pct'], 1)}% | {r['status']} |", flush=True)
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", f"generation_shapes_{caps.tier()}_{date}.json")
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"recipe": args.recipe, "date": date, "machine": dev.describe(dev.resolve("cpu")), "threads": args.threads,
                   "load_avg": os.getloadavg(), "rows": rows}, fh, indent=1, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
