"""One trial: apply a recipe to a fresh copy, first call, fidelity, task metric, the verdict."""
from __future__ import annotations

import copy
import time
import traceback
from typing import Callable

import torch
import torch.nn as nn

from .. import measure, validation
from ..calibration_sources import missing_hint
from ..errors import NotApplicable, SlimError
from ..fidelity import compare
from ..recipes import Recipe, apply
from ..results import RecipeResult
from ..techniques import Context, TaskMetric
from ..workload import Workload, eval_mode
from .choose import validate
from .config import OptimizeConfig, SearchState


def caller(model: nn.Module, example) -> Callable[[], object]:
    """A no-argument call of `model` on `example` under torch.no_grad() (what every timing calls)."""
    def call():
        with torch.no_grad():
            return example(model)
    return call


def try_recipe(recipe: Recipe, s: SearchState, early=None):
    """Apply and validate one recipe on a fresh copy. Returns (result, model or None). `early`
    (model, result) -> reason or None runs after the first call: a reason rejects the recipe
    before the task metric (the search's early check)."""
    workload, example, device, config = s.workload, s.example, s.device, s.config
    res = RecipeResult(name=recipe.name, steps=recipe.to_list())
    ctx = Context(device=device, example=example, calibration=validation.for_recipes(workload),
                  task=task_metric(workload, config))
    try:
        t0 = time.perf_counter()
        model = apply(eval_mode(copy.deepcopy(workload.model).to(device)), recipe, ctx)
        res.prepare_s = time.perf_counter() - t0
        res.first_call_ms, out = measure.time_call(caller(model, example), device)
        res.notes = ctx.notes
        res.size_bytes = measure.serialized_bytes(model)
        fid = compare(s.ref_out, out)
        res.fidelity = fid
        if early is not None and (slower := early(model, res)):
            res.status, res.reason = "rejected", slower
            return res, None
        if workload.evaluate is not None:
            res.metrics = evaluate(workload, model)
            res.metric_drop = s.base_metric - res.metrics[workload.metric]
    except Exception as e:  # noqa: BLE001 - a recipe's failure is a result, not a crash
        fail(res, e, ctx.notes, config.debug, hint=lambda what: missing_hint(what, workload),
             oom_hint=": try a smaller batch in --input-shape")
        return res, None
    res.status, res.reason = validate(res, fid, workload, config)
    if res.status == "ok":
        res.status, res.reason = validation.check(res, model, workload, example, config)
    return res, model


def task_metric(workload: Workload, config: OptimizeConfig) -> TaskMetric | None:
    """The workload's primary metric and --max-drop, for a technique that tunes itself against them
    (NNCF's accuracy control); None without a task metric."""
    if workload.evaluate is None:
        return None
    return TaskMetric(lambda model: evaluate(workload, model)[workload.metric], config.max_drop)


def evaluate(workload: Workload, model: nn.Module) -> dict:
    """The workload's task metrics for `model`, as floats; a clear error when the primary one is missing."""
    with torch.no_grad():
        metrics = workload.evaluate(model)
    if workload.metric not in metrics:
        raise SlimError(f"the evaluate function returned {sorted(metrics)} without the metric '{workload.metric}'",
                        "return a dict that includes the primary metric")
    return {k: float(v) for k, v in metrics.items()}


def forward_error(e: Exception, workload: Workload) -> SlimError:
    """The clear error for a baseline model that fails on its example inputs."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return SlimError(f"out of memory running the model on {workload.example.describe()}", "use a smaller batch in --input-shape")
    return SlimError(f"the model raised {type(e).__name__} on example inputs {workload.example.describe()}: {_first_line(e)}",
                     "check --input-shape/--dtype match what the model expects (run with --debug for the traceback)")


def fail(res: RecipeResult, e: Exception, notes: list, debug: bool, hint: Callable[[str], str] = str,
         oom_hint: str = "") -> RecipeResult:
    """The row of a recipe that raised `e` while applied or judged, for every workload type: a
    technique's NotApplicable is "skipped" with its reason (through `hint`), running out of memory is
    "failed" with `oom_hint`, any other exception "failed" with failure_reason. Returns `res`."""
    if isinstance(e, NotApplicable):
        res.status, res.reason, res.notes = "skipped", f"not applicable: {hint(e.what)}", notes
    elif isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        res.status, res.reason = "failed", f"out of memory ({type(e).__name__}){oom_hint}"
    else:
        res.status, res.reason, res.notes = "failed", failure_reason(e, debug), notes
    return res


def failure_reason(e: Exception, debug: bool) -> str:
    """A failed recipe's reason: the exception's type and first line (with the traceback under --debug)."""
    msg = f"{type(e).__name__}: {_first_line(e)}"
    return msg + ("\n" + traceback.format_exc() if debug else "")


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else repr(e))[:300]
