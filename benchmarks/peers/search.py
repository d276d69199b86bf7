"""torchslim's side, in a process of its own: `optimize` on the case's workload, over the recipes
that decide these models (or every candidate), returning the chosen recipe's steps so the timing
process can apply it afresh beside the peers."""
from __future__ import annotations

import time

import torch

from benchmarks.peers import cases

# The recipes that won or came close on these models in BENCHMARKS.md's per-technique tables
# (CNNs: static INT8 in both lowerings, BF16+compile, weight-only INT8; MiniLM: fast-transformer+BF16,
# BF16+compile, static/dynamic INT8; LSTM: dynamic INT8, BF16). Recipes that do not apply here are skipped.
RECIPES = ("static-int8", "static-int8-ts", "static-int8-ts-x86-sr", "pt2e-dynamic-int8", "dynamic-int8", "bf16-cast", "fast-transformer+bf16-cast",
           "fast-transformer+static-int8-linear", "bf16-cast+compile", "channels_last+bf16-cast+compile",
           "int8-weight-only+compile", "compile")
# The engine recipes (torchslim/engines/): torchslim's row is whatever optimize chose, an engine's included.
ENGINE_RECIPES = ("aoti", "aoti+bf16", "static-int8+aoti", "ort", "ort-int8-dynamic", "ort-int8-static",
                  "openvino", "openvino-fp32", "openvino-int8")
RECIPES += ENGINE_RECIPES
# By default (--quick too) the suite runs torchslim's default search (DEFAULT); RECIPES only with
# `--recipes suite`. DEFAULT is what `torchslim optimize` does without
# --recipes: every candidate of this machine in the priors' order, hardware-missing ones skipped, under
# the default time budget. A hand-kept per-model list here chose nothing on MiniLM on a host without
# BF16 (issue 13): the default search is the one users get, so it is the one to hold against the peers.
DEFAULT = "default"


def search(case: cases.Case, *, recipes: tuple[str, ...] | str | None, rounds: int, threads: int, task_metric: bool,
           max_samples: tuple[int, int] | None = None) -> dict:
    """recipes=None: every candidate recipe of this machine, no time budget; DEFAULT: optimize's
    default search (priors order, hardware skips, the default time budget)."""
    from torchslim import OptimizeConfig, optimize
    from torchslim.recipes import candidates

    if recipes == DEFAULT:
        config = OptimizeConfig(rounds=rounds, threads=threads, out=None, save_model=False)
        mode = f"default search, {config.time_budget:g} min budget"
    else:
        known = [r.name for r in candidates(torch.device("cpu"))]
        names = tuple(n for n in (recipes or known) if n in known)
        config = OptimizeConfig(recipes=names, rounds=rounds, threads=threads, out=None, save_model=False,
                                time_budget=None if recipes is None else OptimizeConfig.time_budget)
        mode = "every candidate, no budget" if recipes is None else "the suite's recipe list"
    bundle = cases.build(case, task_metric=task_metric, max_samples=max_samples)
    t0 = time.perf_counter()
    run = optimize(bundle.workload, config, progress=False)
    chosen = next((r for r in run.recipes if r.name == run.chosen), None)
    return {
        "chosen": run.chosen, "steps": chosen.steps if chosen else None, "search_s": time.perf_counter() - t0,
        "task_metric": bundle.workload.metric, "error": run.error, "mode": mode,
        "tried": [{"name": r.name, "status": r.status, "speedup": r.speedup, "reason": (r.reason or "")[:120]}
                  for r in run.recipes if r.name != "baseline"],
    }
