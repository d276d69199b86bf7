"""`optimize`: try every applicable recipe on a fresh copy, validate, time the survivors interleaved, choose.

The loop of neural-compressor's autotune, kept plain; the steps are in torchslim/search/, which writes
nothing itself: this verb hands it the writer and the saver (search/output.py). `OptimizeConfig` lives
in search/config.py and is re-exported here.
"""
from __future__ import annotations

import datetime
from dataclasses import asdict

import torch

from . import device as dev
from . import measure, priors, resume, search_cache
from .recipes import Recipe, by_name, candidates, ordered
from .results import RecipeResult, RunResult, kept_on_stop
from .progress import shown as progress_shown
from .search.config import DEFAULT_TIME_BUDGET_MIN, OBJECTIVES, Budget, OptimizeConfig, SearchState
from .search.loop import baseline, drive, early_check
from .search.output import reproduce_files, save, save_chosen, write
from .search.replay import replay
from .search.timing import final_timing
from .search.trial import caller, try_recipe
from .search.workload_type import WorkloadType
from .techniques.static_int8 import calibration_cache
from .workload import Workload


def optimize(workload: Workload, config: OptimizeConfig = OptimizeConfig(), progress: bool = True) -> RunResult:
    """Try, validate, measure and rank recipes for `workload`; write outputs under config.out."""
    device = dev.resolve(config.device)
    with measure.num_threads(config.threads), resume.session(config, workload), progress_shown(progress):
        run = RunResult(
            workload={"name": workload.name, "spec": workload.spec, "example": workload.example.describe(),
                      "batch_size": workload.example.batch_size, "metric": workload.metric, "metric_unit": workload.metric_unit,
                      "input_shape": workload.source.get("input_shape"), "dtype": workload.source.get("dtype"),
                      "calib_data": workload.source.get("calib_data")},
            machine={**dev.describe(device), **measure.thread_info()},
            config=asdict(config), recipes=[],
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        with kept_on_stop(run, lambda r: write(r, config)):
            key = search_cache.key(workload, config, device) if config.cache else None
            hit = search_cache.load(key) if key and not config.fresh else None
            # Every recipe compiles its own copy of the same module classes: lift Dynamo's
            # per-function recompile limit for the search, so none silently falls back to eager.
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096), calibration_cache():
                if hit is not None:
                    replay(hit, workload, config, device, run, save)
                else:
                    _search(workload, config, device, run, progress)
            if key:
                run.search = {**(run.search or {}), "cache_key": key}
                if hit is None:
                    search_cache.store(key, run)
    return run


def _search(workload: Workload, config: OptimizeConfig, device: torch.device, run: RunResult, progress: bool) -> None:
    """Baseline; each recipe (likely winners first) tried or skipped with the reason; the survivors
    timed together, round-robin; the best under the objective chosen and saved (search/loop.drive)."""
    s = SearchState(workload, workload.example.to(device), device, config, Budget.of(config), run,
                    write=lambda r: write(r, config), explicit=bool(config.recipes), kind=ForwardPass(), progress=progress)
    drive(s)


class ForwardPass(WorkloadType):
    """The forward-pass workload (a `Workload`: a model called on example inputs): judged by output
    fidelity and the task metric, timed per call, with the early check and the float fallback."""

    fallback = True

    def baseline(self, s: SearchState) -> RecipeResult:
        self.base = baseline(s)
        return self.base

    def candidates(self, s: SearchState) -> list[Recipe]:
        # Respecting the user's time (issue 13): likely winners first (priors.json); a recipe whose
        # hardware is missing is skipped unless named; a clearly slower one is rejected after a brief
        # A/B, before the task metric; once the budget is spent the rest are listed as skipped.
        config, device, workload, run = s.config, s.device, s.workload, s.run
        recipes = (by_name(list(config.recipes), device) if s.explicit
                   else ordered(candidates(device), workload.model, device))
        caps = dev.capabilities(device)
        run.search = {"order": [r.name for r in recipes], "ordered_by": "--recipes" if s.explicit else "priors.json",
                      "model_kind": priors.model_kind(workload.model), "hardware_tier": "cuda" if device.type == "cuda" else caps.tier(),
                      "time_budget_min": None if s.budget.unlimited else config.time_budget, "exhaustive": config.exhaustive,
                      "early_reject": config.early_reject and not config.exhaustive, "phases_s": {"baseline": s.budget.spent()}}
        base_call = caller(s.models["baseline"], s.example)
        if run.search["early_reject"]:
            s.early = lambda m, r: early_check(m, r, base_call, s.example, device)
        return recipes

    def try_one(self, recipe: Recipe, s: SearchState):
        return try_recipe(recipe, s, early=s.early)

    def time_survivors(self, s: SearchState) -> None:
        # The final timing adds rounds while the baseline's own interval is too wide, and says so when
        # it stays too wide instead of calling recipes slower.
        phases = s.run.search["phases_s"]
        t_trials = s.budget.spent()
        phases["recipes"] = t_trials - phases["baseline"]
        s.bar.set_postfix_str("timing (interleaved)" + s.budget.clock())
        final_timing(s)
        phases["timing"] = s.budget.spent() - t_trials

    def choose(self, s: SearchState) -> RecipeResult | None:
        s.bar.set_postfix_str("choosing, saving, reloading in a fresh process")
        chosen = save_chosen(s.run, self.base, s.models, s.workload, s.example, s.config)  # the best whose saved model reloads
        s.run.search["phases_s"]["total"] = s.budget.spent()
        return chosen

    def report_files(self, run: RunResult, d: dict) -> dict[str, str]:
        return reproduce_files(run, d)


__all__ = ["DEFAULT_TIME_BUDGET_MIN", "OBJECTIVES", "OptimizeConfig", "optimize"]
