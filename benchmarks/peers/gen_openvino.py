"""OpenVINO on an optimum-intel export (`optimum-cli export openvino --weight-format ...` of the float
folder torchslim caches): greedy generation with OpenVINO GenAI's LLMPipeline at batch 1 on the job's
token ids (timed per token by a streamer), and perplexity with optimum-intel's OVModelForCausalLM on the
same IR. Runs in the venv with openvino-genai and optimum-intel:
`VENV/bin/python gen_openvino.py JOB.json --model DIR --name openvino-int4`."""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_job  # noqa: E402

# compiled-model properties worth recording (what the CPU plugin chose by default)
PROPS = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "INFERENCE_NUM_THREADS")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--model", required=True, help="folder of an optimum-intel OpenVINO export")
    ap.add_argument("--name", default="openvino")
    ap.add_argument("--precision", default="")
    args = ap.parse_args(argv)
    job = gen_job.read_job(args.job)

    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    threads = job["threads"]
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    # GenAI's default CPU pipeline (paged attention) caches prompt prefixes across generate() calls: every
    # timed round reuses the same prompt, so prefix caching would skip the prompt pass. Off, explicitly.
    sched = genai.SchedulerConfig()
    sched.enable_prefix_caching = False
    t0 = time.perf_counter()
    pipe = genai.LLMPipeline(args.model, "CPU", scheduler_config=sched, **cfg)
    load_s = time.perf_counter() - t0
    gcfg = pipe.get_generation_config()
    gcfg.do_sample = False
    gcfg.num_beams = 1

    class Stamps(genai.StreamerBase):
        def __init__(self):
            super().__init__()
            self.times, self.tokens = [], []

        def write(self, token):
            now = time.perf_counter()
            for t in (token if isinstance(token, (list, tuple)) else [token]):
                self.times.append(now)
                self.tokens.append(int(t))
            return genai.StreamingStatus.RUNNING

        def end(self):
            pass

    def generate(prompt, new_tokens):
        gcfg.max_new_tokens = new_tokens
        gcfg.min_new_tokens = new_tokens  # EOS suppressed, as torchslim's baseline
        ids = ov.Tensor(np.asarray([prompt], dtype=np.int64))
        st = Stamps()
        t0 = time.perf_counter()
        pipe.generate(ids, gcfg, st)
        ts = st.times
        return st.tokens, (ts[0] - t0) * 1000.0, [(b - a) * 1000.0 for a, b in zip(ts, ts[1:])]

    timing, tokens = gen_job.timed_rounds(generate, job["prompt_ids"], job["new_tokens"], job["rounds"], job["warmup"])
    del pipe

    core = ov.Core()
    compiled = core.compile_model(os.path.join(args.model, "openvino_model.xml"), "CPU", cfg)
    props = {}
    for p in PROPS:
        try:
            props[p] = str(compiled.get_property(p))
        except Exception as e:  # noqa: BLE001 - a property this plugin version does not report
            props[p] = f"n/a ({type(e).__name__})"
    del compiled

    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(args.model, ov_config=cfg, compile=True)

    import torch  # optimum-intel takes and returns torch tensors

    def logits_of(chunk):
        ids = torch.tensor([chunk], dtype=torch.long)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out.logits[0].float().numpy()

    with torch.no_grad():
        ppl = gen_job.perplexity(logits_of, job["ppl_ids"], job["window"])
    size = sum(os.path.getsize(os.path.join(args.model, f)) for f in os.listdir(args.model) if f.startswith("openvino_model"))
    gen_job.emit({"name": args.name, "engine": "openvino", "precision": args.precision,
                  "version": f"openvino {ov.__version__.split('-')[0]}, openvino-genai {genai.__version__.split('-')[0]}",
                  "model_file": os.path.basename(args.model.rstrip('/')), "size_bytes": size, "load_s": load_s, **timing,
                  "perplexity": ppl, "tokens": tokens, "threads": threads, "compiled_properties": props})
    return 0


if __name__ == "__main__":
    sys.exit(main())
