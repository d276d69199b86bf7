"""Replaying an identical earlier search from the search cache (search_cache.py)."""
from __future__ import annotations

import copy
import time

from .. import validation
from ..errors import SlimError
from ..fidelity import compare
from ..recipes import Recipe, apply
from ..results import RecipeResult, RunResult
from ..techniques import Context
from ..workload import Workload, eval_mode
from .trial import caller, task_metric


def replay(hit: dict, workload: Workload, config, device, run: RunResult, save) -> None:
    """The rows of an identical earlier search (search_cache.py), reused as they were measured and
    marked with when; only the chosen recipe is applied again, checked against the baseline's
    outputs on the example, and saved with `save(run, chosen, model, workload, example, config)`
    (search/output.save: the surfaces are passed in, the search does not import them)."""
    t_start = time.perf_counter()
    when = hit.get("created") or "?"
    for d in hit["recipes"]:
        r = RecipeResult.from_dict(d)
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
        ref_out = caller(eval_mode(workload.model.to(device)), example)()
        ctx = Context(device=device, example=example, calibration=validation.for_recipes(workload),
                      task=task_metric(workload, config))
        model = apply(eval_mode(copy.deepcopy(workload.model).to(device)), Recipe.from_list(chosen.steps), ctx)
        fid = compare(ref_out, caller(model, example)())
        if not fid.finite or fid.min_cosine < config.min_cosine:
            raise SlimError(f"the cached choice {chosen.name} no longer reproduces (min cosine {fid.min_cosine:.4f})",
                            "run again with --fresh for a new search")
        problem = save(run, chosen, model, workload, example, config)
        if problem is not None:
            raise SlimError(f"the cached choice {chosen.name} was saved but does not reload: {problem}",
                            "run again with --fresh for a new search")
    run.search["phases_s"] = {**(run.search.get("phases_s") or {}), "replay": time.perf_counter() - t_start}
