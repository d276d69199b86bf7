"""torchslim's side of the generation peer case, in its own process: the model's own FP32 eager
generate() (the baseline) and torchslim's generation recipes, through torchslim's generation search
(`optimize_generation`: each recipe applied, checked on text, then timed interleaved with the baseline
in this process). `python gen_torchslim.py JOB.json [--recipes a,b]` with torchslim importable."""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
import gen_job  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--recipes", default=None, help="generation recipe names (default: torchslim's default list here)")
    args = ap.parse_args(argv)
    job = gen_job.read_job(args.job)

    import torch

    import torchslim
    from torchslim import device as dev
    from torchslim.generation import quality
    from torchslim.generation.load import load_causal_lm
    from torchslim.generation.runner import hf_generate
    from torchslim.generation.search import GenerationConfig, optimize_generation, prompt_ids

    t0 = time.perf_counter()
    lm = load_causal_lm(job["gguf"])
    load_s = time.perf_counter() - t0
    ids = prompt_ids(lm.tokenizer, list(quality.PROMPTS), len(job["prompt_ids"]), 1)
    text = quality.text_tokens(lm.tokenizer, len(job["ppl_ids"]))
    if ids[0].tolist() != job["prompt_ids"] or text[0].tolist() != job["ppl_ids"]:
        raise SystemExit("the job's token ids are not the ones torchslim builds (prompt or held-out text differs)")
    with torchslim.measure.num_threads(job["threads"]):
        base_tokens = hf_generate(lm.model, ids, job["new_tokens"]).tokens[0].tolist()
    config = GenerationConfig(prompt_len=len(job["prompt_ids"]), new_tokens=job["new_tokens"], large_batch=0,
                              ppl_tokens=len(job["ppl_ids"]), rounds=job["rounds"], threads=job["threads"],
                              save_model=False, recipes=tuple(args.recipes.split(",")) if args.recipes else None)
    run = optimize_generation(lm, config, progress=False).to_dict()
    rows = []
    for r in run["recipes"]:
        gen = r.get("generation") or {}
        rows.append({"name": r["name"], "engine": "torch", "status": r.get("status"), "reason": r.get("reason"),
                     "ttft_ms": gen.get("ttft_ms"), "decode_ms_per_token": gen.get("decode_ms_per_token"),
                     "decode_tokens_per_s": gen.get("decode_tokens_per_s"),
                     "end_to_end_tokens_per_s": gen.get("end_to_end_tokens_per_s"),
                     "decode_ci95_ms": gen.get("decode_ci95_ms"), "ttft_ci95_ms": gen.get("ttft_ci95_ms"),
                     "generations": gen.get("generations"), "decode_steps": gen.get("decode_steps"),
                     "perplexity": r.get("perplexity"), "greedy_agreement_4x32": r.get("greedy_agreement"),
                     "first_call_ms": r.get("first_call_ms"), "size_bytes": r.get("size_bytes"),
                     "notes": r.get("notes")})
    gen_job.emit({"engine": "torch", "version": f"torch {torch.__version__}, torchslim (this checkout)",
                  "chosen": run.get("chosen"), "rows": rows, "baseline_tokens": base_tokens, "load_s": load_s,
                  "bf16_fast": dev.supports_bf16(torch.device("cpu")), "machine": run.get("machine"),
                  "threads": job["threads"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
