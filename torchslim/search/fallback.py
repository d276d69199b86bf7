"""The float fallback: a quantization recipe rejected on fidelity or metric, retried with its most
sensitive layers kept in float (ranked by sensitivity.py), as a row of its own."""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn as nn

from .. import validation
from ..fidelity import compare
from ..recipes import Recipe, apply
from ..results import RecipeResult
from ..sensitivity import fewest_float_layers, make_probe, measure_layers, quantization_step, reuses_calibration, with_float_layers
from ..techniques import CompileConfig, Context
from ..workload import eval_mode
from .config import Budget, OptimizeConfig, SearchState
from .trial import evaluate, failure_reason, try_recipe

FALLBACK_MAX_LAYERS = 8  # default cap: each bisection trial costs one evaluate(), 1 + log2(8) = 4 at most


def why_not(recipe: Recipe, res: RecipeResult, config: OptimizeConfig, budget: Budget, layers: int = 0) -> str | None:
    """Why the sensitivity fallback is not tried for this rejection, or None to try it. `layers`:
    the model's Conv/Linear count, what a ranking without a shared calibration costs in copies."""
    if res.early and res.reason.startswith("slower than the baseline"):
        return "the recipe is slower than the baseline: keeping layers in float would not make it faster"
    if config.exhaustive:
        return None
    if budget.over():
        return f"the {config.time_budget:g} min time budget is spent"
    i = quantization_step(recipe.steps)
    step = recipe.steps[i]
    if not reuses_calibration(step) and any(isinstance(s, CompileConfig) for s in recipe.steps[i + 1:]):
        # The issue-13 case: ao-int8-dynamic+compile on MiniLM, ~25 min: every ranking trial scores
        # an uncompiled quantized copy (many times slower) and every retry compiles anew.
        return (f"ranking {step.label()}'s layers needs one quantized copy per layer, each scored uncompiled, and "
                "each retry compiles anew (nothing to reuse); --exhaustive runs it")
    if not budget.unlimited and not reuses_calibration(step) and res.prepare_s:
        # one copy per layer, each as long to make as the recipe was (an engine INT8 recipe on MiniLM:
        # 37 copies x ~16 s = 10 min, against a 1.5 min budget)
        cost, left = layers * res.prepare_s, budget.left()
        if cost > left:
            return (f"ranking {step.label()}'s layers needs one quantized copy per layer: about {layers} x "
                    f"{res.prepare_s:.0f} s = {cost:.0f} s, more than the {left:.0f} s left of the time budget; "
                    "--exhaustive or --time-budget 0 runs it")
    return None


def fallback(recipe: Recipe, rejected: RecipeResult, s: SearchState):
    """Retry a rejected quantization recipe with its most sensitive layers kept in float.

    Rank the layers by the output SQNR each one alone quantized gives (sensitivity.py: prepared and
    calibrated once), find by bisection the fewest of the most sensitive that the simulation says
    pass --min-cosine and --max-drop, then re-apply the real recipe with them in skip=(...) and
    validate that as any recipe; on a failure add the next layer, at most config.fallback_retries
    times. Returns (the retry's result row, its model), or (None, None) with the reason recorded in
    `rejected.fallback`."""
    workload, example, config = s.workload, s.example, s.config
    taken = {r.name for r in s.run.recipes}
    t0 = time.perf_counter()
    i = quantization_step(recipe.steps)
    step = recipe.steps[i]
    info: dict = {"from": recipe.name, "why": rejected.reason}
    if validation.rejected_at_other_shape(rejected):
        rejected.fallback = {**info, "result": "not retried: rejected at another input shape, which layers in float do not change"}
        return None, None
    try:
        ctx = Context(device=s.device, example=example, calibration=validation.for_recipes(workload))
        prefix = apply(eval_mode(copy.deepcopy(workload.model).to(s.device)), Recipe(recipe.steps[:i]), ctx)
        probe = make_probe(prefix, step, ctx)
        ranking = measure_layers(probe, [example], [s.ref_out])
        order = [r["name"] for r in ranking]
        limit = min(len(order), config.fallback_max_layers or min(FALLBACK_MAX_LAYERS, math.ceil(len(order) / 2)))
        keep, trials = fewest_float_layers(probe, order, lambda m: predict(m, s), limit)
    except Exception as e:  # noqa: BLE001 - a failed fallback leaves the rejection as it was
        info["error"] = failure_reason(e, config.debug)
        rejected.fallback = info
        return None, None
    info.update(method=probe.method, ranking=ranking, predictions=trials, max_float_layers=limit)
    if keep is None:
        info["result"] = f"not retried: even the {limit} most sensitive layers in float are predicted to fail"
        info["seconds"] = time.perf_counter() - t0
        rejected.fallback = info
        return None, None
    attempts = []
    for k in range(config.fallback_retries):
        if k and s.budget.over():
            info["stopped"] = "time budget spent: no further retry"
            break
        retry = Recipe(recipe.steps[:i] + (with_float_layers(step, keep),) + recipe.steps[i + 1:])
        res, model = try_recipe(retry, s)
        attempts.append({"float_layers": list(keep), "status": res.status, "reason": res.reason,
                         "metric_drop": res.metric_drop, "min_cosine": res.fidelity.min_cosine if res.fidelity else None})
        if res.status != "rejected" or len(keep) >= limit:
            break
        keep = order[:len(keep) + 1]
    by_name = {r["name"]: r for r in ranking}
    info.update(attempts=attempts, seconds=time.perf_counter() - t0,
                kept_in_float=[{"name": n, "kind": by_name[n]["kind"], "rank": by_name[n]["rank"],
                                "sqnr_db_alone": by_name[n]["sqnr_db"]} for n in keep])
    res.fallback = info
    if res.name in taken:
        res.name = f"{res.name}-{len(keep)}float"
    kept = ", ".join(keep)
    if res.status == "ok":
        res.reason = f"kept {len(keep)} most sensitive layer(s) in float ({kept}): {recipe.name} alone was rejected"
    res.notes = [f"fallback for {recipe.name}: kept in float {kept} (ranked by output SQNR with each layer alone quantized)"] + res.notes
    rejected.notes = rejected.notes + [f"retried as {res.name} with {len(keep)} layer(s) in float: {res.status}"]
    return res, model


def predict(model: nn.Module, s: SearchState) -> tuple[bool, dict]:
    """choose.validate's checks on a simulated model (the probe): min cosine on the example, then the metric."""
    workload, config = s.workload, s.config
    with torch.no_grad():
        fid = compare(s.ref_out, s.example(model))
    info = {"min_cosine": fid.min_cosine}
    ok = fid.finite and fid.min_cosine >= config.min_cosine
    if ok and workload.evaluate is not None:
        info["metric_drop"] = s.base_metric - evaluate(workload, model)[workload.metric]
        ok = info["metric_drop"] <= config.max_drop
    return ok, info
