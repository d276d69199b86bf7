"""The generation peer case (issue 12): SmolLM2-135M-Instruct at batch 1, greedy, 128-token prompt and 64
new tokens, against llama.cpp on the same Q4_1 GGUF and OpenVINO (GenAI) on optimum-intel exports of the
same float weights. TTFT, decode tokens/s, perplexity on the same held-out text, agreement with FP32.

Every contestant runs in its own process, one after another, on the same token ids (the HF tokenizer's
ids of torchslim's built-in real prompts and held-out text, written to a job file): torchslim (FP32 eager
generate() + its recipes, interleaved in one process by its generation search), llama.cpp in the venv that
has llama-cpp-python, OpenVINO in the venv that has openvino-genai + optimum-intel. See README.md
("Generation") for the venvs and the exports.

    python benchmarks/peers/generation.py --llama-python /work/venv-llama/bin/python \\
        --ov-python /work/venv-ov/bin/python --ov-model openvino-int4-asym-g32=/work/ov-models/int4-asym-g32
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
MARK = "GENPEER-RESULT "


def build_job(args) -> dict:
    """The token ids every contestant gets: torchslim's prompt (batch 1) and held-out perplexity text."""
    from torchslim.generation import quality
    from torchslim.generation.load import gguf_folder, load_causal_lm
    from torchslim.generation.runner import eos_ids
    from torchslim.generation.search import prompt_ids

    lm = load_causal_lm(args.gguf)
    ids = prompt_ids(lm.tokenizer, list(quality.PROMPTS), args.prompt_len, 1)[0].tolist()
    text = quality.text_tokens(lm.tokenizer, args.ppl_tokens)[0].tolist()
    return {"gguf": args.gguf, "float_folder": gguf_folder(args.gguf), "prompt_ids": ids, "ppl_ids": text,
            "window": 256, "new_tokens": args.new_tokens, "threads": args.threads, "rounds": args.rounds,
            "warmup": args.warmup, "eos": eos_ids(lm.model),
            "prompt_text_tail": lm.tokenizer.decode(ids[-24:]),
            "perplexity_text": f"pydoc_data.topics (first {quality.PPL_TOPICS} topics), {args.ppl_tokens} tokens, windows of 256"}


def run_one(cmd: list[str], env: dict | None, timeout: int) -> dict:
    """Run a runner process; its result (the marked JSON line), or {'error': ...}."""
    t0, load0 = time.perf_counter(), list(os.getloadavg())
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "load_average_start": load0}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if p.returncode != 0 or not lines:
        tail = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()][-3:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)[-600:], "load_average_start": load0}
    out = json.loads(lines[-1][len(MARK):])
    out["process_wall_s"] = time.perf_counter() - t0
    out["load_average_start"] = load0
    return out


def agreement(tokens: list[int] | None, ref: list[int]) -> dict | None:
    if not tokens:
        return None
    n = min(len(tokens), len(ref))
    same = [a == b for a, b in zip(tokens[:n], ref[:n])]
    return {"agreement": sum(same) / n if n else None, "identical_prefix": same.index(False) if False in same else n}


def rows_of(results: dict) -> list[dict]:
    """One row per contestant, with ratios to FP32 eager generate() (the torchslim process's baseline)."""
    ts = results.get("torchslim") or {}
    rows = [dict(r, process="torchslim", chosen=(r["name"] == ts.get("chosen"))) for r in ts.get("rows", [])]
    base = next((r for r in rows if r["name"] == "baseline"), None)
    ref = ts.get("baseline_tokens") or []
    for key, peer in results.items():
        if key == "torchslim":
            continue
        row = {k: v for k, v in peer.items() if k not in ("tokens",)}
        row.setdefault("name", key)
        row["process"] = key
        if "error" not in peer:
            row["agreement_64"] = agreement(peer.get("tokens"), ref)
        rows.append(row)
    for r in rows:
        if base and r.get("decode_ms_per_token") and base.get("decode_ms_per_token"):
            r["decode_x"] = base["decode_ms_per_token"] / r["decode_ms_per_token"]
            r["ttft_x"] = base["ttft_ms"] / r["ttft_ms"]
        if base and r.get("perplexity") and base.get("perplexity"):
            r["ppl_delta_pct"] = 100.0 * (r["perplexity"] / base["perplexity"] - 1.0)
    return rows


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def table(rows: list[dict]) -> str:
    """The markdown table of the case."""
    head = ("| contestant | process | TTFT ms | TTFT x | decode ms/tok | tok/s | decode x | ppl | ppl d% | agree (64 tok) | weights MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    out = [head]
    for r in rows:
        name = r["name"] + (" (chosen)" if r.get("chosen") else "")
        name = {"baseline": "FP32 eager generate() (baseline)"}.get(r["name"], name)
        if r.get("error") or r.get("status") in ("skipped", "failed"):
            why = r.get("error") or r.get("reason") or r.get("status")
            out.append(f"| {name} | {r['process']} | {r.get('status') or 'failed'}: {why} |" + " |" * 8)
            continue
        ag = r.get("agreement_64")
        agree = f"{ag['agreement']:.0%}" if ag else (f"({r['greedy_agreement_4x32']:.0%} on 4x32)" if r.get("greedy_agreement_4x32") is not None else "-")
        if r["name"] == "baseline":
            agree = "100%"
        size = r.get("size_bytes")
        out.append(f"| {name} | {r['process']} | {_f(r.get('ttft_ms'))} | {_f(r.get('ttft_x'), '{:.2f}')} | "
                   f"{_f(r.get('decode_ms_per_token'), '{:.2f}')} | {_f(r.get('decode_tokens_per_s'))} | "
                   f"{_f(r.get('decode_x'), '{:.2f}')} | {_f(r.get('perplexity'), '{:.2f}')} | "
                   f"{_f(r.get('ppl_delta_pct'), '{:+.1f}')} | {agree} | {_f(size / 1e6 if size else None, '{:.0f}')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    from torchslim import device as dev
    from torchslim.fileio import write_json, write_text
    from torchslim.generation.load import smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="the GGUF both torchslim and llama.cpp run (default: SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ppl-tokens", type=int, default=512)
    ap.add_argument("--recipes", default="static-cache,static-cache+compile",
                    help="torchslim generation recipes ('' for torchslim's default list here)")
    ap.add_argument("--llama-python", default=None, help="python of a venv with llama-cpp-python (no llama.cpp row without)")
    ap.add_argument("--llama-gguf", action="append", default=[], metavar="NAME=FILE",
                    help="more GGUF files for llama.cpp (e.g. an F32 conversion of the same weights)")
    ap.add_argument("--ov-python", default=None, help="python of a venv with openvino-genai + optimum-intel")
    ap.add_argument("--ov-model", action="append", default=[], metavar="NAME=DIR", help="optimum-intel export folder(s)")
    ap.add_argument("--only", default=None, help="comma-separated processes to run (torchslim, llama.cpp-..., openvino-...)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", default=None, help="raw JSON (default benchmarks/results/peers_generation_<date>.json)")
    args = ap.parse_args(argv)
    args.gguf = args.gguf or smollm2_gguf()
    only = set(args.only.split(",")) if args.only else None

    job = build_job(args)
    fd, job_path = tempfile.mkstemp(suffix=".json", prefix="genpeer-job-")
    with os.fdopen(fd, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    plan = [("torchslim", [sys.executable, os.path.join(HERE, "gen_torchslim.py"), job_path]
             + (["--recipes", args.recipes] if args.recipes else []), env)]
    if args.llama_python:
        for spec in [f"llama.cpp-q4_1={args.gguf}"] + args.llama_gguf:
            name, path = spec.split("=", 1)
            plan.append((name, [args.llama_python, os.path.join(HERE, "gen_llama.py"), job_path, "--gguf", path,
                                "--name", name], None))
    if args.ov_python:
        for spec in args.ov_model:
            name, path = spec.split("=", 1)
            plan.append((name, [args.ov_python, os.path.join(HERE, "gen_openvino.py"), job_path, "--model", path,
                                "--name", name], None))
    results = {}
    for name, cmd, e in plan:
        if only and name not in only:
            continue
        print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(cmd, e, args.timeout)
        if "error" in results[name]:
            print(f"  {name}: {results[name]['error']}", file=sys.stderr)
    os.unlink(job_path)
    rows = rows_of(results)
    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "case": "SmolLM2-135M-Instruct (Q4_1 GGUF), batch 1, greedy",
              "job": {k: v for k, v in job.items() if k not in ("prompt_ids", "ppl_ids")},
              "cpu_flags_of_note": sorted(f for f in dev.cpu_flags() if f.startswith(("avx", "amx", "fma"))),
              "load_average_end": list(os.getloadavg()), "results": results, "rows": rows}
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"peers_generation_{datetime.date.today().isoformat()}.json")
    write_json(out, record)
    md = table(rows)
    write_text(os.path.splitext(out)[0] + ".md", md + "\n")
    print(md)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
