"""The candidate loop: the baseline, then each recipe skipped (hardware, time budget) or tried, with
the early A/B check and the float fallback, results written after each."""
from __future__ import annotations

import time

import torch.nn as nn

from .. import engines, measure, validation
from ..errors import SlimError
from ..fidelity import compare
from ..recipes import Recipe, missing_hardware
from ..results import RecipeResult, RunResult
from ..sensitivity import quantization_step
from ..workload import Workload, eval_mode
from .fallback import fallback, why_not
from .output import write
from .timing import settle_ms
from .trial import caller, evaluate, forward_error, try_recipe

EARLY_SLOWER = 0.9  # the early check rejects a recipe below this speedup whose 95% interval is below 1


def baseline(workload: Workload, example, device, run: RunResult):
    """Measure the FP32 eager baseline (the row every recipe is judged against). Returns
    (its row, its model, its outputs on the example, its task metric or None)."""
    base_model = eval_mode(workload.model.to(device))
    base = RecipeResult(name="baseline", steps=[], status="baseline", reason="FP32 eager under torch.no_grad()")
    run.recipes.append(base)
    try:
        base.first_call_ms, ref_out = measure.time_call(caller(base_model, example), device)
    except Exception as e:  # noqa: BLE001 - user model
        raise forward_error(e, workload) from e
    base.size_bytes = measure.serialized_bytes(base_model)
    validation.check_baseline(ref_out, workload.example)
    base.fidelity = compare(ref_out, ref_out)
    base_metric = None
    if workload.evaluate is not None:
        base.metrics = evaluate(workload, base_model)
        base_metric = base.metrics[workload.metric]
        if base_metric != base_metric or abs(base_metric) == float("inf"):  # no drop can be measured from it
            raise SlimError(f"the task metric '{workload.metric}' of the FP32 baseline is {base_metric}",
                            "make the --eval function return a finite number for the original model")
    return base, base_model, ref_out, base_metric


def try_candidates(recipes: list[Recipe], workload: Workload, example, device, ref_out, base_metric, config,
                   run: RunResult, models: dict[str, nn.Module], bar, explicit: bool, t_start: float,
                   budget_s: float | None, early=None) -> None:
    """Try each recipe in order (or list why not), appending its row to `run.recipes` and its model
    to `models`; a rejected quantization recipe gets the float fallback as a row of its own. Under a
    time budget the fallbacks wait until every recipe has had its turn: a retry of a rejected recipe
    (tens of seconds of ranking and task metric) is less promising than the next fresh candidate."""
    tried, deferred = 0, []
    for recipe in recipes:
        elapsed = time.perf_counter() - t_start
        bar.set_postfix_str(recipe.name + clock(elapsed, budget_s))
        skip = skip_reason(recipe, device, config, explicit, elapsed, budget_s, tried)
        if skip:
            run.recipes.append(RecipeResult(name=recipe.name, steps=recipe.to_list(), status="skipped", reason=skip))
            bar.update(1)
            continue
        res, model = try_recipe(recipe, workload, example, device, ref_out, base_metric, config, early=early)
        tried += res.status != "skipped"  # not applicable: not yet a candidate
        run.recipes.append(res)
        if model is not None:
            models[recipe.name] = model
        if config.fallback and res.status == "rejected" and quantization_step(recipe.steps) is not None:
            if budget_s is None or config.exhaustive:
                write(run, config)
                retry_in_float(recipe, res, workload, example, device, ref_out, base_metric, config, run, models,
                               bar, t_start, budget_s)
            else:
                deferred.append((recipe, res))
        write(run, config)
        bar.update(1)
    for recipe, res in deferred:
        retry_in_float(recipe, res, workload, example, device, ref_out, base_metric, config, run, models, bar,
                       t_start, budget_s)
        write(run, config)


def retry_in_float(recipe: Recipe, res: RecipeResult, workload: Workload, example, device, ref_out, base_metric,
                   config, run: RunResult, models: dict[str, nn.Module], bar, t_start: float,
                   budget_s: float | None) -> None:
    """The float fallback of one rejected recipe, or the reason it is not tried in `res.fallback`."""
    why = why_not(recipe, res, config, time.perf_counter() - t_start, budget_s,
                  layers=len(engines.quantizable_layers(workload.model)))
    if why:
        res.fallback = {"from": recipe.name, "why": res.reason, "result": f"not tried: {why}"}
        return
    bar.set_postfix_str(f"{recipe.name}: keeping sensitive layers in float" + clock(time.perf_counter() - t_start, budget_s))
    retry, model = fallback(recipe, res, workload, example, device, ref_out, base_metric, config,
                            taken={r.name for r in run.recipes},
                            deadline=None if budget_s is None else t_start + budget_s)
    if retry is not None:
        run.recipes.append(retry)
        if model is not None:
            models[retry.name] = model


def clock(elapsed: float, budget_s: float | None) -> str:
    """' | 42 s elapsed, 78 s of the budget left' for the progress bar."""
    if budget_s is None:
        return f" | {elapsed:.0f} s elapsed, no time budget"
    return f" | {elapsed:.0f} s elapsed, {max(0.0, budget_s - elapsed):.0f} s of the budget left"


def skip_reason(recipe: Recipe, device, config, explicit: bool, elapsed: float, budget_s: float | None,
                tried: int) -> str | None:
    """Why `recipe` is not tried: its hardware is missing, or the time budget is spent (the first
    recipe that gets to run is always tried, so a search under any budget has a candidate)."""
    why = None if explicit or config.exhaustive else missing_hardware(recipe, device)
    if why:  # named by the user, or the exhaustive search: run it even where it is emulated
        return f"{why} (name it in --recipes to try it anyway)"
    if budget_s is not None and elapsed >= budget_s and tried:
        return (f"time budget: the {config.time_budget:g} min of --time-budget were spent before this recipe's turn "
                "(--time-budget 0 or --exhaustive tries every recipe)")
    return None


def early_check(model: nn.Module, res: RecipeResult, base_call, example, device) -> str | None:
    """The brief interleaved A/B after a recipe's first call: the reason to reject it as slower, or None."""
    q = measure.quick_ratio(base_call, caller(model, example), device=device, settle_ms=settle_ms([model], device))
    res.early = q
    res.speedup = q["speedup"]  # replaced by the final timing's for the recipes that get there
    lo, hi = q["ci95"]
    if q["speedup"] < EARLY_SLOWER and hi < 1.0:
        return (f"slower than the baseline in the early check ({q['speedup']:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x "
                f"over {q['calls']} interleaved calls): task metric not run")
    return None
