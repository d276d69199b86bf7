"""`optimize`: try every applicable recipe on a fresh copy, validate, measure interleaved, choose.

The search is deliberately plain (as in neural-compressor's autotune): baseline first, then each
recipe: apply -> first call -> fidelity and task metric -> keep or reject with the reason. Then all
survivors are timed together, round-robin, and the best under the objective is chosen. A recipe
that fails, breaks the outputs or is slower than the baseline is listed and never chosen. A
quantization recipe that breaks the outputs or the metric is retried with its most sensitive layers
kept in float (sensitivity.py), as a row of its own that records which layers and why.

Respecting the user's time (issue 13): recipes are tried likely-winners first (priors.json); one whose
hardware is missing (a config's `requires`) is skipped with the reason unless named in --recipes;
after its first call each recipe gets a brief A/B against the baseline and a clearly slower one is
rejected before the task metric; once `time_budget` minutes are spent the rest are listed as
skipped; the final timing adds rounds while the baseline's own interval is too wide, and says so
when it stays too wide instead of calling recipes slower. `exhaustive` turns all of that off.
"""
from __future__ import annotations

import copy
import datetime
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn

from . import artifacts, measure, resume, validation
from . import device as dev
from .calibration_sources import missing_hint
from .errors import NotApplicable, SlimError, first_line
from .fidelity import compare
from .fileio import write_json, write_text
from .progress import bar as progress_bar
from .recipes import BASELINE, Recipe, apply, by_name, candidates, missing_hardware, ordered
from .results import RecipeResult, RunResult, kept_on_stop
from .sensitivity import fewest_float_layers, make_probe, measure_layers, quantization_step, with_float_layers
from .techniques import CompileConfig, Context
from .workload import Workload, eval_mode

OBJECTIVES = ("latency", "throughput", "size", "memory")
FALLBACK_MAX_LAYERS = 8  # default cap: each bisection trial costs one evaluate(), 1 + log2(8) = 4 at most
# Sized so each built-in example's recipe phase fits: with the likely winners first, the default
# search reaches the exhaustive search's choice on both (BENCHMARKS.md "A search that respects the
# user's time").
DEFAULT_TIME_BUDGET_MIN = 1.5
EARLY_SLOWER = 0.9  # the early check rejects a recipe below this speedup whose 95% interval is below 1
MAX_EXTRA_TIMING = 2  # while the baseline's interval is too wide, up to this many more sets of `rounds`


@dataclass(frozen=True)
class OptimizeConfig:
    objective: str = "latency"
    max_drop: float = 1.0  # largest allowed drop of the workload's primary metric, in its units
    min_cosine: float = 0.99  # smallest allowed per-sample cosine vs the baseline's outputs
    recipes: tuple | None = None  # recipe names (or Recipe objects) to try; None: every applicable one
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None: torch's default
    rounds: int = 15  # interleaved timing rounds
    target_round_ms: float = 60.0  # time each recipe gets per round
    out: str | None = None  # folder for results.json, report.html, model/, reproduce.py
    save_model: bool = True
    debug: bool = False  # keep tracebacks in failure reasons
    # A quantization recipe rejected by --max-drop/--min-cosine is retried with its most sensitive
    # layers kept in float (see _fallback): at most `fallback_max_layers` of them (None: half the
    # quantized layers, at most FALLBACK_MAX_LAYERS) and at most `fallback_retries` real
    # re-applications (each prepares and compiles anew).
    fallback: bool = True
    fallback_max_layers: int | None = None
    fallback_retries: int = 2
    # The search's time (issue 13): minutes for the baseline and the recipes (0 or None: no limit);
    # `exhaustive` tries everything (no budget, no hardware skip, no early check, every fallback);
    # `cache` reuses the rows of an identical earlier search (search_cache.py) unless `fresh`.
    time_budget: float | None = DEFAULT_TIME_BUDGET_MIN
    early_reject: bool = True
    exhaustive: bool = False
    cache: bool = False
    fresh: bool = False

    def __post_init__(self):
        if self.time_budget is not None and not self.time_budget >= 0:
            raise SlimError("--time-budget must be >= 0 minutes", f"e.g. --time-budget {DEFAULT_TIME_BUDGET_MIN:g}; 0 means no limit")
        if self.objective not in OBJECTIVES:
            raise SlimError(f"unknown objective '{self.objective}'", f"use one of {', '.join(OBJECTIVES)}")
        if self.max_drop < 0:
            raise SlimError("--max-drop must be >= 0", "e.g. --max-drop 1.0 allows one point of accuracy")
        if not 0 < self.min_cosine <= 1:
            raise SlimError("--min-cosine must be in (0, 1]", "e.g. --min-cosine 0.99")
        if self.threads is not None and self.threads < 1:
            raise SlimError(f"--threads must be >= 1, not {self.threads}", f"e.g. --threads {os.cpu_count() or 1} (this machine's cores), or leave it out")
        if self.rounds < 1:
            raise SlimError("--rounds must be >= 1", "the default is 15")
        if self.fallback_retries < 1 or (self.fallback_max_layers is not None and self.fallback_max_layers < 1):
            raise SlimError("fallback_retries and fallback_max_layers must be >= 1", "or set fallback=False to turn the fallback off")


def _run(model: nn.Module, example) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return example(model)
    return call


def optimize(workload: Workload, config: OptimizeConfig = OptimizeConfig(), progress: bool = True) -> RunResult:
    """Try, validate, measure and rank recipes for `workload`; write outputs under config.out."""
    device = dev.resolve(config.device)
    with measure.num_threads(config.threads), resume.session(config, workload):
        run = RunResult(
            workload={"name": workload.name, "spec": workload.spec, "example": workload.example.describe(),
                      "batch_size": workload.example.batch_size, "metric": workload.metric, "metric_unit": workload.metric_unit,
                      "input_shape": workload.source.get("input_shape"), "dtype": workload.source.get("dtype"),
                      "calib_data": workload.source.get("calib_data")},
            machine={**dev.describe(device), **measure.thread_info()},
            config=asdict(config), recipes=[],
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        with kept_on_stop(run, lambda r: _write(r, config)):
            from . import search_cache
            from .techniques.static_int8 import calibration_cache

            key = search_cache.key(workload, config, device) if config.cache else None
            hit = search_cache.load(key) if key and not config.fresh else None
            # Every recipe compiles its own copy of the same module classes: lift Dynamo's
            # per-function recompile limit for the search, so none silently falls back to eager.
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096), calibration_cache():
                if hit is not None:
                    _replay(hit, workload, config, device, run, progress)
                else:
                    _search(workload, config, device, run, progress)
            if key:
                run.search = {**(run.search or {}), "cache_key": key}
                if hit is None:
                    search_cache.store(key, run)
    return run


def _search(workload: Workload, config: OptimizeConfig, device: torch.device, run: RunResult, progress: bool) -> None:
    t_start = time.perf_counter()
    example = workload.example.to(device)
    base_model = eval_mode(workload.model.to(device))
    base = RecipeResult(name="baseline", steps=[], status="baseline", reason="FP32 eager under torch.no_grad()")
    run.recipes.append(base)
    try:
        base.first_call_ms, ref_out = measure.time_call(_run(base_model, example), device)
    except Exception as e:  # noqa: BLE001 - user model
        raise _forward_error(e, workload, config) from e
    base.size_bytes = measure.serialized_bytes(base_model)
    validation.check_baseline(ref_out, workload.example)
    base.fidelity = compare(ref_out, ref_out).to_dict()
    base_metric = None
    if workload.evaluate is not None:
        base.metrics = _evaluate(workload, base_model)
        base_metric = base.metrics[workload.metric]
    _write(run, config)

    explicit = bool(config.recipes)
    from . import priors

    recipes = by_name(list(config.recipes), device) if explicit else ordered(candidates(device), workload.model, device)
    budget_s = 60.0 * config.time_budget if config.time_budget and not config.exhaustive else None
    caps = dev.capabilities(device)
    run.search = {"order": [r.name for r in recipes], "ordered_by": "--recipes" if explicit else "priors.json",
                  "model_kind": priors.model_kind(workload.model), "hardware_tier": "cuda" if device.type == "cuda" else caps.tier(),
                  "time_budget_min": None if budget_s is None else config.time_budget, "exhaustive": config.exhaustive,
                  "early_reject": config.early_reject and not config.exhaustive, "phases_s": {"baseline": time.perf_counter() - t_start}}
    base_call = _run(base_model, example)
    early = (lambda m, r: _early(m, r, base_call, example, device)) if run.search["early_reject"] else None
    models: dict[str, nn.Module] = {"baseline": base_model}
    bar = progress_bar(len(recipes) + 2, unit="recipes", enabled=progress)
    tried = 0
    for recipe in recipes:
        elapsed = time.perf_counter() - t_start
        bar.set_postfix_str(recipe.name + _clock(elapsed, budget_s))
        skip = _skip_reason(recipe, device, config, explicit, elapsed, budget_s, tried)
        if skip:
            run.recipes.append(RecipeResult(name=recipe.name, steps=recipe.to_list(), status="skipped", reason=skip))
            bar.update(1)
            continue
        res, model = _try(recipe, workload, example, device, ref_out, base_metric, config, early=early)
        tried += res.status != "skipped"  # not applicable: not yet a candidate
        run.recipes.append(res)
        if model is not None:
            models[recipe.name] = model
        if config.fallback and res.status == "rejected" and quantization_step(recipe.steps) is not None:
            _write(run, config)
            why_not = _no_fallback(recipe, res, config, time.perf_counter() - t_start, budget_s)
            if why_not:
                res.fallback = {"from": recipe.name, "why": res.reason, "result": f"not tried: {why_not}"}
            else:
                bar.set_postfix_str(f"{recipe.name}: keeping sensitive layers in float" + _clock(time.perf_counter() - t_start, budget_s))
                retry, model = _fallback(recipe, res, workload, example, device, ref_out, base_metric, config,
                                         taken={r.name for r in run.recipes},
                                         deadline=None if budget_s is None else t_start + budget_s)
                if retry is not None:
                    run.recipes.append(retry)
                    if model is not None:
                        models[retry.name] = model
        _write(run, config)
        bar.update(1)
    t_trials = time.perf_counter()
    run.search["phases_s"]["recipes"] = t_trials - t_start - run.search["phases_s"]["baseline"]

    bar.set_postfix_str("timing (interleaved)" + _clock(t_trials - t_start, budget_s))
    _final_timing(models, example, workload, config, device, run, None if budget_s is None else t_start + budget_s)
    run.search["phases_s"]["timing"] = time.perf_counter() - t_trials
    bar.update(1)

    chosen = _choose(run.recipes, config.objective)
    if chosen is not None:
        chosen.status = "chosen"
        chosen.reason = _why(chosen, base, config.objective)
        run.chosen = chosen.name
        if config.out and config.save_model:
            bar.set_postfix_str("saving")
            _save(run, chosen, models[chosen.name], workload, example, config)
    run.search["phases_s"]["total"] = time.perf_counter() - t_start
    bar.update(1)
    bar.close()


def _save(run: RunResult, chosen: RecipeResult, model: nn.Module, workload: Workload, example, config: OptimizeConfig) -> None:
    folder = os.path.join(config.out, "model")
    recipe = Recipe.from_list(chosen.steps)
    calibration = validation.for_recipes(workload)  # what the recipe was calibrated on (held-out batches excluded)
    calib = list(calibration()) if calibration and any(s.needs_calibration for s in recipe.steps) else None
    artifacts.save(folder, workload.model, recipe, workload.example, spec=workload.spec, source=workload.source,
                   reference_output=_run(model, example)(), calibration=calib, optimized=model)
    run.artifact = folder


def _replay(hit: dict, workload: Workload, config: OptimizeConfig, device, run: RunResult, progress: bool) -> None:
    """The rows of an identical earlier search (search_cache.py), reused as they were measured and
    marked with when; only the chosen recipe is applied again, checked against the baseline's
    outputs on the example, and saved."""
    t_start = time.perf_counter()
    when = hit.get("created") or "?"
    fields = set(RecipeResult.__dataclass_fields__)
    for d in hit["recipes"]:
        r = RecipeResult(**{k: v for k, v in d.items() if k in fields})
        r.cached = r.cached or when
        run.recipes.append(r)
    run.search = {**(hit.get("search") or {}), "from_cache": when}
    run.measurement = hit.get("measurement")
    chosen = next((r for r in run.recipes if r.name == hit.get("chosen")), None)
    if chosen is None:
        return
    run.chosen = chosen.name
    if config.out and config.save_model:
        example = workload.example.to(device)
        ref_out = _run(eval_mode(workload.model.to(device)), example)()
        ctx = Context(device=device, example=example, calibration=validation.for_recipes(workload))
        model = apply(eval_mode(copy.deepcopy(workload.model).to(device)), Recipe.from_list(chosen.steps), ctx)
        fid = compare(ref_out, _run(model, example)())
        if not fid.finite or fid.min_cosine < config.min_cosine:
            raise SlimError(f"the cached choice {chosen.name} no longer reproduces (min cosine {fid.min_cosine:.4f})",
                            "run again with --fresh for a new search")
        _save(run, chosen, model, workload, example, config)
    run.search["phases_s"] = {**(run.search.get("phases_s") or {}), "replay": time.perf_counter() - t_start}


def _clock(elapsed: float, budget_s: float | None) -> str:
    """' | 42 s elapsed, 78 s of the budget left' for the progress bar."""
    if budget_s is None:
        return f" | {elapsed:.0f} s elapsed, no time budget"
    return f" | {elapsed:.0f} s elapsed, {max(0.0, budget_s - elapsed):.0f} s of the budget left"


def _skip_reason(recipe: Recipe, device, config: OptimizeConfig, explicit: bool, elapsed: float, budget_s: float | None,
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


def _early(model: nn.Module, res: RecipeResult, base_call, example, device) -> str | None:
    """The brief interleaved A/B after a recipe's first call: the reason to reject it as slower, or None."""
    q = measure.quick_ratio(base_call, _run(model, example), device=device)
    res.early = q
    res.speedup = q["speedup"]  # replaced by the final timing's for the recipes that get there
    lo, hi = q["ci95"]
    if q["speedup"] < EARLY_SLOWER and hi < 1.0:
        return (f"slower than the baseline in the early check ({q['speedup']:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x "
                f"over {q['calls']} interleaved calls): task metric not run")
    return None


def _no_fallback(recipe: Recipe, res: RecipeResult, config: OptimizeConfig, elapsed: float, budget_s: float | None) -> str | None:
    """Why the sensitivity fallback is not tried for this rejection, or None to try it."""
    from .sensitivity import reuses_calibration

    if res.early and res.reason.startswith("slower than the baseline"):
        return "the recipe is slower than the baseline: keeping layers in float would not make it faster"
    if config.exhaustive:
        return None
    if budget_s is not None and elapsed >= budget_s:
        return f"the {config.time_budget:g} min time budget is spent"
    i = quantization_step(recipe.steps)
    step = recipe.steps[i]
    if not reuses_calibration(step) and any(isinstance(s, CompileConfig) for s in recipe.steps[i + 1:]):
        # The issue-13 case: ao-int8-dynamic+compile on MiniLM, ~25 min: every ranking trial scores
        # an uncompiled quantized copy (many times slower) and every retry compiles anew.
        return (f"ranking {step.label()}'s layers needs one quantized copy per layer, each scored uncompiled, and "
                "each retry compiles anew (nothing to reuse); --exhaustive runs it")
    return None


def _final_timing(models: dict, example, workload: Workload, config: OptimizeConfig, device, run: RunResult,
                  deadline: float | None = None) -> None:
    """Interleaved timing of the survivors; more rounds while the baseline's own interval is too wide
    (and the time budget, if any, has time left for another set as long as the first took); a
    recipe is called slower only when its interval says so (measure.verdict)."""
    t0 = time.perf_counter()
    by = {r.name: r for r in run.recipes}
    fns = {n: _run(m, example) for n, m in models.items()}
    samples = measure.interleaved(fns, rounds=config.rounds, target_round_ms=config.target_round_ms, device=device)
    extra = 0
    while True:
        timings = {n: measure.summarize(xs, by[n].first_call_ms, workload.example.batch_size).to_dict() for n, xs in samples.items()}
        verdict = measure.verdict(timings["baseline"], {n: t for n, t in timings.items() if n != "baseline"},
                                  torch.get_num_threads())
        per_set = (time.perf_counter() - t0) / (1 + extra)
        out_of_time = deadline is not None and time.perf_counter() + per_set > deadline
        if verdict["reliable"] or extra >= MAX_EXTRA_TIMING or out_of_time:
            if not verdict["reliable"] and out_of_time:
                verdict["why"] += "; no time left in the budget for more rounds"
            break
        extra += 1
        more = measure.interleaved(fns, rounds=config.rounds, target_round_ms=config.target_round_ms, device=device)
        samples = {n: samples[n] + more[n] for n in samples}
    verdict["rounds"] = config.rounds * (1 + extra)
    run.measurement = verdict
    base_t = timings["baseline"]
    for name, m in models.items():
        r = by[name]
        r.timing = timings[name]
        r.speedup = base_t["median_ms"] / r.timing["median_ms"]
        peak = measure.peak_memory(_run(m, example), device)
        r.peak_memory_bytes = peak["peak_bytes"]
        run.machine["peak_memory_method"] = peak["method"]
        if r.status != "ok" or r.speedup > 1.0:
            continue
        lo, hi = measure.speedup_interval(base_t, r.timing)
        if hi < 1.0:
            r.status, r.reason = "rejected", f"slower than the baseline ({r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x)"
        elif verdict["reliable"]:
            r.status, r.reason = "rejected", f"not faster than the baseline ({r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x)"
        else:
            r.status, r.reason = "inconclusive", f"{verdict['why']}: {r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x"


def _try(recipe: Recipe, workload: Workload, example, device, ref_out, base_metric, config: OptimizeConfig, early=None):
    """Apply and validate one recipe on a fresh copy. Returns (result, model or None). `early`
    (model, result) -> reason or None runs after the first call: a reason rejects the recipe
    before the task metric (the search's early check)."""
    if (settled := resume.reused(recipe.name)) is not None:
        return settled, None
    res = RecipeResult(name=recipe.name, steps=recipe.to_list())
    ctx = Context(device=device, example=example, calibration=validation.for_recipes(workload))
    try:
        t0 = time.perf_counter()
        model = apply(eval_mode(copy.deepcopy(workload.model).to(device)), recipe, ctx)
        res.prepare_s = time.perf_counter() - t0
        res.first_call_ms, out = measure.time_call(_run(model, example), device)
        res.notes = ctx.notes
        res.size_bytes = measure.serialized_bytes(model)
        fid = compare(ref_out, out)
        res.fidelity = fid.to_dict()
        if early is not None and (slower := early(model, res)):
            res.status, res.reason = "rejected", slower
            return res, None
        if workload.evaluate is not None:
            res.metrics = _evaluate(workload, model)
            res.metric_drop = base_metric - res.metrics[workload.metric]
    except NotApplicable as e:
        res.status, res.reason, res.notes = "skipped", f"not applicable: {missing_hint(e.what, workload)}", ctx.notes
        return res, None
    except (torch.OutOfMemoryError, MemoryError) as e:
        res.status, res.reason = "failed", f"out of memory ({type(e).__name__}): try a smaller batch in --input-shape"
        return res, None
    except Exception as e:  # noqa: BLE001 - a recipe's failure is a result, not a crash
        res.status, res.reason, res.notes = "failed", _reason(e, config.debug), ctx.notes
        return res, None
    res.status, res.reason = _validate(res, fid, workload, config)
    if res.status == "ok":
        res.status, res.reason = validation.check(res, model, workload, example, config)
    return res, model


def _fallback(recipe: Recipe, rejected: RecipeResult, workload: Workload, example, device, ref_out, base_metric,
              config: OptimizeConfig, taken: set[str], deadline: float | None = None):
    """Retry a rejected quantization recipe with its most sensitive layers kept in float.

    Rank the layers by the output SQNR each one alone quantized gives (sensitivity.py: prepared and
    calibrated once), find by bisection the fewest of the most sensitive that the simulation says
    pass --min-cosine and --max-drop, then re-apply the real recipe with them in skip=(...) and
    validate that as any recipe; on a failure add the next layer, at most config.fallback_retries
    times. Returns (the retry's result row, its model), or (None, None) with the reason recorded in
    `rejected.fallback`."""
    t0 = time.perf_counter()
    i = quantization_step(recipe.steps)
    step = recipe.steps[i]
    info: dict = {"from": recipe.name, "why": rejected.reason}
    if validation.rejected_at_other_shape(rejected):
        rejected.fallback = {**info, "result": "not retried: rejected at another input shape, which layers in float do not change"}
        return None, None
    try:
        ctx = Context(device=device, example=example, calibration=validation.for_recipes(workload))
        prefix = apply(eval_mode(copy.deepcopy(workload.model).to(device)), Recipe(recipe.steps[:i]), ctx)
        probe = make_probe(prefix, step, ctx)
        ranking = measure_layers(probe, [example], [ref_out])
        order = [r["name"] for r in ranking]
        limit = min(len(order), config.fallback_max_layers or min(FALLBACK_MAX_LAYERS, math.ceil(len(order) / 2)))
        keep, trials = fewest_float_layers(probe, order, lambda m: _predict(m, workload, example, ref_out, base_metric, config), limit)
    except Exception as e:  # noqa: BLE001 - a failed fallback leaves the rejection as it was
        info["error"] = _reason(e, config.debug)
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
        if k and deadline is not None and time.perf_counter() > deadline:
            info["stopped"] = "time budget spent: no further retry"
            break
        retry = Recipe(recipe.steps[:i] + (with_float_layers(step, keep),) + recipe.steps[i + 1:])
        res, model = _try(retry, workload, example, device, ref_out, base_metric, config)
        attempts.append({"float_layers": list(keep), "status": res.status, "reason": res.reason,
                         "metric_drop": res.metric_drop, "min_cosine": (res.fidelity or {}).get("min_cosine")})
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


def _predict(model: nn.Module, workload: Workload, example, ref_out, base_metric, config: OptimizeConfig) -> tuple[bool, dict]:
    """_validate's checks on a simulated model (the probe): min cosine on the example, then the metric."""
    with torch.no_grad():
        fid = compare(ref_out, example(model))
    info = {"min_cosine": fid.min_cosine}
    ok = fid.finite and fid.min_cosine >= config.min_cosine
    if ok and workload.evaluate is not None:
        info["metric_drop"] = base_metric - _evaluate(workload, model)[workload.metric]
        ok = info["metric_drop"] <= config.max_drop
    return ok, info


def _validate(res: RecipeResult, fid, workload: Workload, config: OptimizeConfig) -> tuple[str, str]:
    if not fid.finite:
        return "rejected", "outputs contain NaN or Inf"
    if fid.exact_match is not None and fid.exact_match < 1.0:
        return "rejected", f"integer outputs changed: {fid.exact_match:.2%} of the elements match the baseline's"
    if fid.min_cosine < config.min_cosine:
        return "rejected", f"outputs drifted: min cosine {fid.min_cosine:.4f} < {config.min_cosine}"
    if res.metric_drop is not None and res.metric_drop > config.max_drop:
        return "rejected", f"{workload.metric} dropped {res.metric_drop:.2f} {workload.metric_unit} > --max-drop {config.max_drop}".replace("  ", " ")
    return "ok", ""


def _choose(results: list[RecipeResult], objective: str) -> RecipeResult | None:
    ok = [r for r in results if r.status == "ok" and r.timing]
    if not ok:
        return None
    key = {
        "latency": lambda r: r.timing["median_ms"],
        "throughput": lambda r: -r.timing["throughput_per_s"],
        "size": lambda r: (r.size_bytes, r.timing["median_ms"]),
        "memory": lambda r: (r.peak_memory_bytes, r.timing["median_ms"]),
    }[objective]
    return min(ok, key=key)


def _why(r: RecipeResult, base: RecipeResult, objective: str) -> str:
    size = base.size_bytes / r.size_bytes if r.size_bytes else float("nan")
    return (f"best {objective} among recipes that kept the outputs: {r.speedup:.2f}x faster, "
            f"{size:.2f}x smaller, min cosine {r.fidelity['min_cosine']:.4f}")


def _evaluate(workload: Workload, model: nn.Module) -> dict:
    with torch.no_grad():
        metrics = workload.evaluate(model)
    if workload.metric not in metrics:
        raise SlimError(f"the evaluate function returned {sorted(metrics)} without the metric '{workload.metric}'",
                        "return a dict that includes the primary metric")
    return {k: float(v) for k, v in metrics.items()}


def _forward_error(e: Exception, workload: Workload, config: OptimizeConfig) -> SlimError:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return SlimError(f"out of memory running the model on {workload.example.describe()}", "use a smaller batch in --input-shape")
    return SlimError(f"the model raised {type(e).__name__} on example inputs {workload.example.describe()}: {first_line(e)[:300]}",
                     "check --input-shape/--dtype match what the model expects (run with --debug for the traceback)")


def _reason(e: Exception, debug: bool) -> str:
    msg = f"{type(e).__name__}: {first_line(e)[:300]}"
    return msg + ("\n" + traceback.format_exc() if debug else "")


def _write(run: RunResult, config: OptimizeConfig) -> None:
    """Write results.json (and the report) after every step, so an interrupted run keeps its results."""
    if not config.out:
        return
    from .report import write_html
    from .snippet import snippet

    d = run.to_dict()
    d["snippet"] = snippet(run)
    write_json(os.path.join(config.out, "results.json"), d)
    write_html(d, os.path.join(config.out, "report.html"))
    if run.chosen:
        write_text(os.path.join(config.out, "reproduce.py"), d["snippet"])
