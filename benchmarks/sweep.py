"""Architecture sweep (issue 16, item 6): `optimize` on tiny transformers configs with random weights
and custom modules (tests/sweep_models.py), one table row per model: the chosen recipe, its speedup
(interleaved against FP32 eager in the same process), and the rows that failed or were rejected, why.

    PYTHONPATH=. python benchmarks/sweep.py [--recipes a,b,c | --exhaustive] [--rounds N] [--threads N] [--only bert,vit]

Random weights: speedups say how torchslim's recipes behave on the architecture, not on a trained
model's accuracy. Tiny models are dominated by per-op overhead, so ratios differ from full-size ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

RECIPES = ("inference-mode,torchscript-freeze,dynamic-int8,pt2e-dynamic-int8,bf16-autocast,fast-transformer,"
           "fast-transformer+dynamic-int8,compile")


def calibration_like(ex: tuple, n: int = 8):
    """n random batches shaped like the example (token ids within the example's range), so the
    static INT8 recipes are tried too."""
    import torch

    from torchslim.inputs import Example

    g = torch.Generator().manual_seed(1)
    batches = [Example(tuple(torch.randint(0, int(t.max()) + 1, t.shape, generator=g, dtype=t.dtype) if not t.is_floating_point()
                             else torch.randn(t.shape, generator=g) for t in ex)) for _ in range(n)]
    return lambda: batches


def run_one(name: str, recipes: tuple[str, ...] | None, rounds: int, threads: int | None, out: str,
            exhaustive: bool = False) -> dict:
    """`exhaustive`: every recipe in the catalogue (recipes=None), no time budget, with calibration
    batches, without the float fallback (each failure row is what the recipe itself did)."""
    import sweep_models

    from torchslim.inputs import Example
    from torchslim.optimize import OptimizeConfig, optimize
    from torchslim.workload import Workload

    model, ex = sweep_models.MODELS[name]()
    t0 = time.perf_counter()
    extra = dict(exhaustive=True, fallback=False, time_budget=0) if exhaustive else {}
    run = optimize(Workload(model, Example(tuple(ex)), name=name, calibration=calibration_like(tuple(ex)) if exhaustive else None),
                   OptimizeConfig(recipes=None if exhaustive else recipes, rounds=rounds, threads=threads,
                                  target_round_ms=20.0, out=out, save_model=False, **extra),
                   progress=False)
    chosen = next((r for r in run.recipes if r.status == "chosen"), None)
    slower = [r.name for r in run.recipes if r.status == "rejected" and r.reason.startswith("slower")]
    bad = [f"{r.name}: {r.reason.splitlines()[0][:110]}" for r in run.recipes
           if r.status == "failed" or (r.status == "rejected" and r.name not in slower)]
    bad += [f"slower than the baseline: {', '.join(slower)}"] if slower else []
    base = run.recipes[0].timing.to_dict() if run.recipes[0].timing else {}
    return {"model": name, "chosen": chosen.name if chosen else "none", "speedup": chosen.speedup if chosen else None,
            "baseline": f"{base.get('median_ms', float('nan')):.2f} [{(base.get('ci95_ms') or [0, 0])[0]:.2f}-{(base.get('ci95_ms') or [0, 0])[1]:.2f}]",
            "rows": len(run.recipes) - 1, "failed": sum(r.status == "failed" for r in run.recipes),
            "rejected": sum(r.status == "rejected" for r in run.recipes), "why": bad, "seconds": time.perf_counter() - t0,
            "run": run}


def main() -> None:
    import sweep_models

    p = argparse.ArgumentParser()
    p.add_argument("--recipes", default=RECIPES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None)
    p.add_argument("--exhaustive", action="store_true", help="every recipe, with random calibration batches, no fallback")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(sweep_models.MODELS)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| model | chosen | speedup | baseline ms [95% CI] | rows (failed / rejected) | failed or rejected, why | s |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            r = run_one(n, tuple(a.recipes.split(",")), a.rounds, a.threads, os.path.join(tmp, n), a.exhaustive)
            why = "; ".join(r["why"]).replace("|", "/") or "-"
            sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
            print(f"| {n} | {r['chosen']} | {sp} | {r['baseline']} | {r['rows']} ({r['failed']} / {r['rejected']}) | {why} | {r['seconds']:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
