"""`optimize`: try every applicable recipe on a fresh copy, validate, measure interleaved, choose.

The search is deliberately plain (as in neural-compressor's autotune): baseline first, then each
recipe: apply -> first call -> fidelity and task metric -> keep or reject with the reason. Then all
survivors are timed together, round-robin, and the best under the objective is chosen. A recipe
that fails, breaks the outputs or is slower than the baseline is listed and never chosen. A
quantization recipe that breaks the outputs or the metric is retried with its most sensitive layers
kept in float (sensitivity.py), as a row of its own that records which layers and why.
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
from .errors import NotApplicable, SlimError
from .fidelity import compare
from .fileio import write_json, write_text
from .recipes import BASELINE, Recipe, apply, by_name, candidates
from .results import RecipeResult, RunResult
from .sensitivity import fewest_float_layers, make_probe, measure_layers, quantization_step, with_float_layers
from .techniques import Context
from .workload import Workload, eval_mode

OBJECTIVES = ("latency", "throughput", "size", "memory")
FALLBACK_MAX_LAYERS = 8  # default cap: each bisection trial costs one evaluate(), 1 + log2(8) = 4 at most


@dataclass(frozen=True)
class OptimizeConfig:
    objective: str = "latency"
    max_drop: float = 1.0  # largest allowed drop of the workload's primary metric, in its units
    min_cosine: float = 0.99  # smallest allowed per-sample cosine vs the baseline's outputs
    recipes: tuple[str, ...] | None = None  # recipe names to try; None: every applicable one
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

    def __post_init__(self):
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
        try:
            # Every recipe compiles its own copy of the same module classes: lift Dynamo's
            # per-function recompile limit for the search, so none silently falls back to eager.
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
                _search(workload, config, device, run, progress)
        except KeyboardInterrupt:
            run.error = "interrupted: the recipes measured so far are kept"
            _write(run, config)
            raise
        except SlimError as e:
            run.error = str(e)
            _write(run, config)
            raise
        _write(run, config)
    return run


def _search(workload: Workload, config: OptimizeConfig, device: torch.device, run: RunResult, progress: bool) -> None:
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

    recipes = by_name(list(config.recipes), device) if config.recipes else candidates(device)
    models: dict[str, nn.Module] = {"baseline": base_model}
    bar = _progress(len(recipes) + 2, progress, "recipes")
    for recipe in recipes:
        bar.set_postfix_str(recipe.name)
        res, model = _try(recipe, workload, example, device, ref_out, base_metric, config)
        run.recipes.append(res)
        if model is not None:
            models[recipe.name] = model
        if config.fallback and res.status == "rejected" and quantization_step(recipe.steps) is not None:
            _write(run, config)
            bar.set_postfix_str(f"{recipe.name}: keeping sensitive layers in float")
            retry, model = _fallback(recipe, res, workload, example, device, ref_out, base_metric, config,
                                     taken={r.name for r in run.recipes})
            if retry is not None:
                run.recipes.append(retry)
                if model is not None:
                    models[retry.name] = model
        _write(run, config)
        bar.update(1)

    bar.set_postfix_str("timing (interleaved)")
    by = {r.name: r for r in run.recipes}
    samples = measure.interleaved({n: _run(m, example) for n, m in models.items()}, rounds=config.rounds,
                                  target_round_ms=config.target_round_ms, device=device)
    for name, xs in samples.items():
        r = by[name]
        r.timing = measure.summarize(xs, r.first_call_ms, workload.example.batch_size).to_dict()
    base_ms = base.timing["median_ms"]
    for name, m in models.items():
        r = by[name]
        r.speedup = base_ms / r.timing["median_ms"]
        peak = measure.peak_memory(_run(m, example), device)
        r.peak_memory_bytes = peak["peak_bytes"]
        run.machine["peak_memory_method"] = peak["method"]
        if r.status == "ok" and r.speedup <= 1.0:
            r.status, r.reason = "rejected", f"slower than the baseline ({r.speedup:.2f}x)"
    bar.update(1)

    chosen = _choose(run.recipes, config.objective)
    if chosen is not None:
        chosen.status = "chosen"
        chosen.reason = _why(chosen, base, config.objective)
        run.chosen = chosen.name
        if config.out and config.save_model:
            bar.set_postfix_str("saving")
            folder = os.path.join(config.out, "model")
            recipe = Recipe.from_list(chosen.steps)
            calib = list(workload.calibration()) if workload.calibration and any(s.needs_calibration for s in recipe.steps) else None
            artifacts.save(folder, workload.model, recipe, workload.example, spec=workload.spec, source=workload.source,
                           reference_output=_run(models[chosen.name], example)(), calibration=calib,
                           optimized=models[chosen.name])
            run.artifact = folder
    bar.update(1)
    bar.close()


def _try(recipe: Recipe, workload: Workload, example, device, ref_out, base_metric, config: OptimizeConfig):
    """Apply and validate one recipe on a fresh copy. Returns (result, model or None)."""
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
              config: OptimizeConfig, taken: set[str]):
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
        ctx = Context(device=device, example=example, calibration=workload.calibration)
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
    for _ in range(config.fallback_retries):
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
    return SlimError(f"the model raised {type(e).__name__} on example inputs {workload.example.describe()}: {_first_line(e)}",
                     "check --input-shape/--dtype match what the model expects (run with --debug for the traceback)")


def _reason(e: Exception, debug: bool) -> str:
    msg = f"{type(e).__name__}: {_first_line(e)}"
    return msg + ("\n" + traceback.format_exc() if debug else "")


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else repr(e))[:300]


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


def _progress(total: int, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit=unit, dynamic_ncols=True, leave=False)
