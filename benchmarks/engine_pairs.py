"""Issue 14's question, at batch 1 on the peer suite's models, in one process per model: AOTInductor
(`aoti`: no Python per call) against `torch.compile` in Python (`compile`), with OpenVINO's converted
IR (`openvino`) beside them: set-up time (prepare + first call) and speed.

Each recipe is applied by torchslim (as `optimize` would), its first call timed, then all of them
and FP32 eager are timed interleaved (torchslim.measure.interleaved with the search's pause before
each turn, measure.SETTLE_MS; medians).

    PYTHONPATH=. python benchmarks/engine_pairs.py [--cases fashion-b1,resnet18-b1,minilm-b1] [--rounds 15] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECIPES = ("compile", "aoti", "openvino")


def run_case(case_id: str, rounds: int) -> dict:
    from benchmarks.peers import cases
    from torchslim import measure
    from torchslim.fidelity import compare
    from torchslim.recipes import apply, by_name
    from torchslim.techniques import Context

    bundle = cases.build(cases.BY_ID[case_id], task_metric=False)
    model, example = bundle.model.eval(), bundle.workload.example
    with torch.no_grad():
        ref = example(model)
    fns, rows = {"fp32 eager": lambda: example(model)}, {}
    for recipe in by_name(list(RECIPES), torch.device("cpu")):
        row = rows.setdefault(recipe.name, {})
        try:
            t0 = time.perf_counter()
            ctx = Context(device=torch.device("cpu"), example=example, calibration=bundle.workload.calibration)
            slim = apply(copy.deepcopy(model), recipe, ctx)
            row["prepare_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                out = example(slim)
            row["first_call_s"] = time.perf_counter() - t0
            row["min_cosine"] = compare(ref, out).min_cosine
            fns[recipe.name] = (lambda m: (lambda: example(m)))(slim)
        except Exception as e:  # noqa: BLE001 - a failing recipe is a row
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    with torch.no_grad():
        samples = measure.interleaved(fns, rounds=rounds, settle_ms=measure.SETTLE_MS)  # as the search times engines
    base = statistics.median(samples["fp32 eager"])
    for name, xs in samples.items():
        rows.setdefault(name, {}).update(median_ms=statistics.median(xs), speedup=base / statistics.median(xs))
    return {"case": case_id, "rows": rows}


def render(results: list[dict]) -> str:
    out = ["| case | recipe | prepare + first call s | median ms | x FP32 eager | min cosine |", "|---|---|---|---|---|---|"]
    for res in results:
        for name, r in res["rows"].items():
            setup = f"{r['prepare_s'] + r['first_call_s']:.1f}" if "first_call_s" in r else "-"
            cos = f"{r['min_cosine']:.5f}" if "min_cosine" in r else "-"
            speed = f"{r['median_ms']:.3f} | {r['speedup']:.2f}" if "median_ms" in r else f"{r.get('error', '-')} | -"
            out.append(f"| {res['case']} | {name} | {setup} | {speed} | {cos} |")
        rows = res["rows"]
        for a, b in (("aoti", "compile"), ("openvino", "compile")):
            if "median_ms" in rows.get(a, {}) and "median_ms" in rows.get(b, {}):
                out.append(f"| {res['case']} | **{a} / {b}** | | | **{rows[b]['median_ms'] / rows[a]['median_ms']:.2f}x** | |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="fashion-b1,resnet18-b1,minilm-b1")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the raw rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for case_id in args.cases.split(","):
        results.append(run_case(case_id, args.rounds))
        print(render(results[-1:]), flush=True)
    from torchslim import device as dev

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
            "cpu_tier": dev.capabilities(torch.device("cpu")).tier(), "torch": torch.__version__, "results": results}
    print("\n" + render(results))
    if args.json:
        from torchslim.fileio import write_json

        write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
