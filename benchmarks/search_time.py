"""Wall time of `torchslim optimize` on the built-in examples (the `make demo` command), default
search vs --exhaustive, optionally as a host without AMX/native BF16 (issue 13's benchmark).

    python benchmarks/search_time.py --out /tmp/st [--exhaustive] [--no-amx] [--threads 2]

--no-amx runs with ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI (oneDNN then uses no AMX and no AVX512-BF16:
`ONEDNN_VERBOSE=1` reports "isa:Intel AVX-512 with Intel DL Boost") and TORCHSLIM_CPU_FLAGS set to
this CPU's flags without amx_*, avx512_bf16 and avx512_fp16, so torchslim detects that host. fbgemm
(the eager INT8 kernels) has its own dispatch and still sees this CPU's VNNI, as such a host would.

Prints one markdown row per example: the process wall time is split by each example's own
phases (results.json search.phases_s); the rest is start-up, model loading and saving.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = 1.5  # optimize.DEFAULT_TIME_BUDGET_MIN (not imported: the script runs torchslim in a subprocess)
NO_AMX_DROP = ("amx", "avx512_bf16", "avx512_fp16")


def no_amx_flags() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return " ".join(x for x in line.split(":", 1)[1].split() if not x.startswith(NO_AMX_DROP))
    raise SystemExit("no flags line in /proc/cpuinfo")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--exhaustive", action="store_true")
    p.add_argument("--no-amx", action="store_true")
    p.add_argument("--threads", default="2")
    p.add_argument("--time-budget", default=None)
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": ROOT}
    if a.no_amx:
        env.update(ONEDNN_MAX_CPU_ISA="AVX512_CORE_VNNI", TORCHSLIM_CPU_FLAGS=no_amx_flags())
    cmd = [sys.executable, "-m", "torchslim", "optimize", "--out", a.out, "--threads", a.threads, "--no-progress", "--fresh"]
    cmd += ["--exhaustive"] if a.exhaustive else []
    cmd += ["--time-budget", a.time_budget] if a.time_budget else []
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(proc.returncode)
    mode = ("exhaustive" if a.exhaustive else f"default ({a.time_budget or DEFAULT} min budget)") + (", no-AMX emulation" if a.no_amx else "")
    print(f"process wall time {wall:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end")
    print("| example | search | chosen | speedup | baseline s | recipes s | final timing s | total s | tried | early-rejected | skipped: hardware | skipped: time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(os.listdir(a.out)):
        path = os.path.join(a.out, name, "results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            run = json.load(f)
        rows, ph = run["recipes"][1:], run["search"]["phases_s"]
        chosen = next((r for r in rows if r["name"] == run["chosen"]), None)
        reasons = [str(r.get("reason") or "") for r in rows]
        print(f"| {name} | {mode} | {run['chosen'] or '-'} | {chosen['speedup']:.2f}x |" if chosen else f"| {name} | {mode} | - | - |", end="")
        print(f" {ph.get('baseline', 0):.0f} | {ph.get('recipes', 0):.0f} | {ph.get('timing', 0):.0f} | {ph.get('total', 0):.0f} |"
              f" {sum(1 for r in rows if r['status'] != 'skipped')} | {sum('early check' in x for x in reasons)} |"
              f" {sum('native' in x and r['status'] == 'skipped' for x, r in zip(reasons, rows))} |"
              f" {sum(x.startswith('time budget') for x in reasons)} |")


if __name__ == "__main__":
    main()
