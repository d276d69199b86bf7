"""The candidate loop of every workload type (search/workload_type.py): the baseline, then each recipe
skipped (hardware, time budget, the workload's own reason) or tried, with the early A/B check and the
float fallback, results written after each; then the survivors timed together and the choice."""
from __future__ import annotations

import time

import torch.nn as nn

from .. import engines, measure, resume, validation
from ..errors import SlimError
from ..fidelity import compare
from ..progress import bar as progress_bar
from ..recipes import Recipe, missing_hardware
from ..results import RecipeResult
from ..sensitivity import quantization_step
from ..workload import eval_mode
from . import gain
from .config import Budget, SearchState
from .fallback import fallback, why_not
from .timing import settle_ms
from .trial import caller, evaluate, forward_error

EARLY_SLOWER = 0.9  # the early check rejects a recipe below this speedup whose 95% interval is below 1


def baseline(s: SearchState) -> RecipeResult:
    """Measure the FP32 eager baseline (the row every recipe is judged against): its row in the run,
    its model in `s.models`, its outputs on the example in `s.ref_out`, its task metric (or None) in
    `s.base_metric`. Returns its row."""
    workload = s.workload
    base_model = eval_mode(workload.model.to(s.device))
    base = RecipeResult(name="baseline", steps=[], status="baseline", reason="FP32 eager under torch.no_grad()")
    s.run.recipes.append(base)
    try:
        base.first_call_ms, ref_out = measure.time_call(caller(base_model, s.example), s.device)
    except Exception as e:  # noqa: BLE001 - user model
        raise forward_error(e, workload) from e
    base.size_bytes = measure.serialized_bytes(base_model)
    validation.check_baseline(ref_out, workload.example)
    base.fidelity = compare(ref_out, ref_out)
    s.models["baseline"], s.ref_out, s.base_metric = base_model, ref_out, None
    if workload.evaluate is not None:
        base.metrics = evaluate(workload, base_model)
        s.base_metric = base.metrics[workload.metric]
        if s.base_metric != s.base_metric or abs(s.base_metric) == float("inf"):  # no drop can be measured from it
            raise SlimError(f"the task metric '{workload.metric}' of the FP32 baseline is {s.base_metric}",
                            "make the --eval function return a finite number for the original model")
    return base


def drive(s: SearchState) -> None:
    """One search of the workload type `s.kind`: its baseline, its candidates tried in turn
    (try_candidates), the survivors timed together, the best chosen and saved; `s.write(run)` after
    each step."""
    kind = s.kind
    kind.baseline(s)
    s.write(s.run)
    recipes = kind.candidates(s)
    s.bar = progress_bar(len(recipes) + 2, unit=kind.unit, enabled=s.progress)
    try_candidates(recipes, s)
    kind.time_survivors(s)
    s.bar.update(1)
    kind.choose(s)
    s.bar.update(1)
    s.bar.close()


def try_candidates(recipes: list[Recipe], s: SearchState) -> None:
    """Try each recipe in order (or list why not), appending its row to the run and its model to
    `s.models`, and `s.write(run)` after each; a rejected quantization recipe gets the float fallback
    as a row of its own. Under a time budget the fallbacks wait behind the fresh recipes (a retry costs
    tens of seconds of ranking and task metric), and after each trial what is left is re-ranked by
    expected gain (search/gain.py): a fallback or accuracy-aware INT8 recipe whose measured ceiling
    beats the best accepted speedup by a margin goes first. The order used, why it changed and what
    more time would buy go to `run.search`."""
    tried, seconds = 0, {}
    queue = [{"kind": "recipe", "name": r.name, "recipe": r, "accuracy_aware": any(st.accuracy_aware for st in r.steps)}
             for r in recipes]
    used, why = [], []
    if s.run.search is not None:  # the same lists, so a run stopped midway says what it did so far
        s.run.search.update(order_used=used, reordered=why)
    while queue:
        item = queue.pop(0)
        used.append(gain.label(item))
        t0 = time.perf_counter()
        if item["kind"] == "fallback":
            retry_in_float(item["recipe"], item["row"], s)
        else:
            recipe = item["recipe"]
            s.bar.set_postfix_str(recipe.name + s.budget.clock() + s.kind.eta(s))
            if (settled := resume.reused(recipe.name, type(s.kind.row(recipe)))) is not None:
                s.run.recipes.append(settled)  # failed, skipped or rejected in the interrupted run of this job
                s.bar.update(1)
                s.write(s.run)
                continue
            skip = skip_reason(recipe, s.device, s.config, s.explicit, s.budget, tried) or s.kind.skip(recipe, s)
            if skip:
                s.run.recipes.append(s.kind.row(recipe, status="skipped", reason=skip))
                s.bar.update(1)
                s.write(s.run)  # a stopped run keeps it too
                continue
            res, model = s.kind.try_one(recipe, s)
            tried += res.status != "skipped"  # not applicable: not yet a candidate
            s.run.recipes.append(res)
            if model is not None:
                s.kind.keep(recipe, res, model, s)
            if (s.kind.fallback and s.config.fallback and res.status == "rejected"
                    and quantization_step(recipe.steps) is not None):
                if s.budget.unlimited:
                    s.write(s.run)
                    retry_in_float(recipe, res, s)
                else:
                    queue.append({"kind": "fallback", "name": recipe.name, "from": recipe.name, "recipe": recipe, "row": res})
            s.bar.update(1)
            if res.status != "skipped":
                seconds[recipe.name] = time.perf_counter() - t0
        s.write(s.run)
        if not s.budget.unlimited and not s.budget.over():
            rows = [{"name": r.name, "status": r.status, "speedup": r.speedup, "reason": r.reason} for r in s.run.recipes]
            queue, changed = gain.rerank(queue, rows)
            if changed:
                why.append(f"after {used[-1]}: {changed}")
    _record(s, used, why, seconds)


def _record(s: SearchState, used: list[str], why: list[str], seconds: dict[str, float]) -> None:
    """The order used, why it left the priors order, and what a larger budget would buy, in run.search."""
    if s.run.search is None:
        return
    s.run.search.update(order_used=used, reordered=why, trial_s={k: round(v, 1) for k, v in seconds.items()})
    untried = [{"kind": "recipe", "name": r.name} for r in s.run.recipes
               if r.status == "skipped" and str(r.reason or "").startswith("time budget")]
    untried += [{"kind": "fallback", "name": r.name, "from": r.name} for r in s.run.recipes
                if r.fallback and "time budget" in str(r.fallback.get("result", ""))]
    more = None if s.budget.unlimited else gain.more_time(untried, seconds, s.budget.minutes)
    if more:
        s.run.search["more_time"] = more


def retry_in_float(recipe: Recipe, res: RecipeResult, s: SearchState) -> None:
    """The float fallback of one rejected recipe, or the reason it is not tried in `res.fallback`."""
    why = why_not(recipe, res, s.config, s.budget, layers=len(engines.quantizable_layers(s.workload.model)))
    if why:
        res.fallback = {"from": recipe.name, "why": res.reason, "result": f"not tried: {why}"}
        return
    s.bar.set_postfix_str(f"{recipe.name}: keeping sensitive layers in float" + s.budget.clock())
    retry, model = fallback(recipe, res, s)
    if retry is not None:
        s.run.recipes.append(retry)
        if model is not None:
            s.models[retry.name] = model


def skip_reason(recipe: Recipe, device, config, explicit: bool, budget: Budget, tried: int) -> str | None:
    """Why `recipe` is not tried: its hardware is missing, or the time budget is spent (the first
    recipe that gets to run is always tried, so a search under any budget has a candidate). Shared by
    every workload's search: `config` needs `exhaustive` and `time_budget`."""
    why = None if explicit or config.exhaustive else missing_hardware(recipe, device)
    if why:  # named by the user, or the exhaustive search: run it even where it is emulated
        return f"{why} (name it in --recipes to try it anyway)"
    if tried and budget.over():
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
