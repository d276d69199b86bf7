"""`optimize`: try every applicable recipe on a fresh copy, validate, time the survivors interleaved, choose.

The loop of neural-compressor's autotune, kept plain; the steps are in torchslim/search/.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import asdict, dataclass

import torch

from . import device as dev
from . import measure, priors, resume, search_cache
from .errors import SlimError
from .recipes import by_name, candidates, ordered
from .results import RunResult, kept_on_stop
from .search.loop import baseline, clock, early_check, try_candidates
from .progress import bar as progress_bar
from .search.output import save_chosen, write
from .search.replay import replay
from .search.timing import final_timing
from .search.trial import caller
from .techniques.static_int8 import calibration_cache
from .workload import Workload

OBJECTIVES = ("latency", "throughput", "size", "memory")
# Sized so each built-in example's recipe phase fits: with the likely winners first, the default
# search reaches the exhaustive search's choice on both (BENCHMARKS.md "A search that respects the
# user's time").
DEFAULT_TIME_BUDGET_MIN = 1.5


@dataclass(frozen=True)
class OptimizeConfig:
    """What `optimize` looks for (objective, thresholds) and how it searches, times and writes."""

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
    keep_float: bool = False  # also save FP32 weights + calibration beside an engine file that loads by itself
    debug: bool = False  # keep tracebacks in failure reasons
    # A quantization recipe rejected by --max-drop/--min-cosine is retried with its most sensitive
    # layers kept in float (search/fallback.py): at most `fallback_max_layers` of them (None: half the
    # quantized layers, at most search.fallback.FALLBACK_MAX_LAYERS) and at most `fallback_retries` real
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
        with kept_on_stop(run, lambda r: write(r, config)):
            key = search_cache.key(workload, config, device) if config.cache else None
            hit = search_cache.load(key) if key and not config.fresh else None
            # Every recipe compiles its own copy of the same module classes: lift Dynamo's
            # per-function recompile limit for the search, so none silently falls back to eager.
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096), calibration_cache():
                if hit is not None:
                    replay(hit, workload, config, device, run)
                else:
                    _search(workload, config, device, run, progress)
            if key:
                run.search = {**(run.search or {}), "cache_key": key}
                if hit is None:
                    search_cache.store(key, run)
    return run


def _search(workload: Workload, config: OptimizeConfig, device: torch.device, run: RunResult, progress: bool) -> None:
    """Baseline; each recipe (likely winners first) tried or skipped with the reason; the survivors
    timed together, round-robin; the best under the objective chosen and saved."""
    t_start = time.perf_counter()
    example = workload.example.to(device)
    base, base_model, ref_out, base_metric = baseline(workload, example, device, run)
    write(run, config)

    # Respecting the user's time (issue 13): likely winners first (priors.json); a recipe whose
    # hardware is missing is skipped unless named; a clearly slower one is rejected after a brief
    # A/B, before the task metric; once the budget is spent the rest are listed as skipped.
    explicit = bool(config.recipes)
    recipes = by_name(list(config.recipes), device) if explicit else ordered(candidates(device), workload.model, device)
    budget_s = 60.0 * config.time_budget if config.time_budget and not config.exhaustive else None
    caps = dev.capabilities(device)
    run.search = {"order": [r.name for r in recipes], "ordered_by": "--recipes" if explicit else "priors.json",
                  "model_kind": priors.model_kind(workload.model), "hardware_tier": "cuda" if device.type == "cuda" else caps.tier(),
                  "time_budget_min": None if budget_s is None else config.time_budget, "exhaustive": config.exhaustive,
                  "early_reject": config.early_reject and not config.exhaustive, "phases_s": {"baseline": time.perf_counter() - t_start}}
    base_call = caller(base_model, example)
    early = (lambda m, r: early_check(m, r, base_call, example, device)) if run.search["early_reject"] else None
    models = {"baseline": base_model}
    bar = progress_bar(len(recipes) + 2, unit="recipes", enabled=progress)
    try_candidates(recipes, workload, example, device, ref_out, base_metric, config, run, models, bar, explicit,
                   t_start, budget_s, early)
    t_trials = time.perf_counter()
    run.search["phases_s"]["recipes"] = t_trials - t_start - run.search["phases_s"]["baseline"]

    # The final timing adds rounds while the baseline's own interval is too wide, and says so when
    # it stays too wide instead of calling recipes slower.
    bar.set_postfix_str("timing (interleaved)" + clock(t_trials - t_start, budget_s))
    final_timing(models, example, workload, config, device, run, None if budget_s is None else t_start + budget_s)
    run.search["phases_s"]["timing"] = time.perf_counter() - t_trials
    bar.update(1)

    bar.set_postfix_str("choosing, saving, reloading in a fresh process")
    save_chosen(run, base, models, workload, example, config)  # the best recipe whose saved model reloads
    run.search["phases_s"]["total"] = time.perf_counter() - t_start
    bar.update(1)
    bar.close()
