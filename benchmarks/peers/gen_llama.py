"""llama.cpp (llama-cpp-python) on a GGUF: greedy generation at batch 1 on the job's token ids, timed per
token, and perplexity on the job's held-out ids. Runs in the venv that has llama-cpp-python (never
torchslim's): `VENV/bin/python gen_llama.py JOB.json --gguf FILE.gguf --name llama.cpp-q4_1`.

The loop is llama.cpp's own evaluation (`Llama.eval`: llama_decode on the prompt in one batch, then
one token per call) and an argmax over the last logits in numpy, with the EOS ids masked as
torchslim's baseline does (generate(min_new_tokens=new_tokens)): the same work as torchslim's lean
loop, without llama-cpp-python's Python-side sampler chain."""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_job  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", nargs="?")
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--name", default="llama.cpp")
    ap.add_argument("--precision", default="gguf")
    ap.add_argument("--to-f32", metavar="OUT", default=None,
                    help="instead of a run: write the GGUF's weights dequantized to F32 (llama_model_quantize)")
    args = ap.parse_args(argv)
    if args.to_f32:
        return to_f32(args.gguf, args.to_f32)
    job = gen_job.read_job(args.job)

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    threads = job["threads"]
    t0 = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    mask = np.zeros(n_vocab, dtype=np.float32)
    mask[[e for e in job["eos"] if e < n_vocab]] = -np.inf

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def generate(prompt, new_tokens):
        llm.reset()  # n_past = 0: eval() drops the KV cache beyond it
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = int(np.argmax(last_logits() + mask))
        t_prev = time.perf_counter()
        ttft = (t_prev - t0) * 1000.0
        out, steps = [tok], []
        for _ in range(1, new_tokens):
            llm.eval([tok])
            tok = int(np.argmax(last_logits() + mask))
            now = time.perf_counter()
            steps.append((now - t_prev) * 1000.0)
            t_prev = now
            out.append(tok)
        return out, ttft, steps

    timing, tokens = gen_job.timed_rounds(generate, job["prompt_ids"], job["new_tokens"], job["rounds"], job["warmup"])
    del llm

    # perplexity: a second context that keeps the logits of every position
    ppl_llm = Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                    n_threads_batch=threads, logits_all=True, verbose=False)

    def logits_of(chunk):
        ppl_llm.reset()
        ppl_llm.eval(chunk)
        return np.array(ppl_llm.scores[:len(chunk)])

    ppl = gen_job.perplexity(logits_of, job["ppl_ids"], job["window"])
    gen_job.emit({"name": args.name, "engine": "llama.cpp", "precision": args.precision,
                  "version": f"llama-cpp-python {llama_cpp.__version__}", "model_file": os.path.basename(args.gguf),
                  "size_bytes": os.path.getsize(args.gguf), "load_s": load_s, **timing, "perplexity": ppl,
                  "tokens": tokens, "threads": threads,
                  "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()})
    return 0


def to_f32(src: str, dst: str) -> int:
    """The same weights as F32 (llama.cpp dequantizes Q4_1 as transformers does for torchslim)."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    p.allow_requantize = True
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), p)
    if rc == 0:
        os.replace(tmp, dst)
    return int(rc != 0)


if __name__ == "__main__":
    sys.exit(main())
