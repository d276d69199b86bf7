"""What the search is asked and what it shares: `OptimizeConfig` (the user's options), `Budget` (the
search's time, one object owning the deadline), and `SearchState` (what every trial of one search
needs, instead of a dozen positional parameters)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import SlimError
from ..inputs import Example
from ..results import RunResult
from ..workload import Workload

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


@dataclass(frozen=True)
class Budget:
    """The search's time (issue 13): `seconds` for the baseline and the recipes from `start`
    (time.perf_counter()), or no limit (`seconds` None: --time-budget 0, or --exhaustive)."""

    seconds: float | None
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, config: OptimizeConfig, start: float | None = None) -> "Budget":
        """The budget `config` asks for, started now (or at `start`)."""
        seconds = 60.0 * config.time_budget if config.time_budget and not config.exhaustive else None
        return cls(seconds, time.perf_counter() if start is None else start)

    @property
    def unlimited(self) -> bool:
        return self.seconds is None

    @property
    def minutes(self) -> float | None:
        return None if self.seconds is None else self.seconds / 60.0

    @property
    def deadline(self) -> float | None:
        """The time.perf_counter() value at which the budget is spent, or None."""
        return None if self.seconds is None else self.start + self.seconds

    def spent(self) -> float:
        """Seconds since the search started."""
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        """Seconds left (0 once spent), or None without a limit."""
        return None if self.seconds is None else max(0.0, self.seconds - self.spent())

    def over(self) -> bool:
        """Whether the budget is spent (never without a limit)."""
        return self.seconds is not None and self.spent() >= self.seconds

    def clock(self) -> str:
        """' | 42 s elapsed, 78 s of the budget left' for the progress bar."""
        if self.seconds is None:
            return f" | {self.spent():.0f} s elapsed, no time budget"
        return f" | {self.spent():.0f} s elapsed, {self.left():.0f} s of the budget left"


@dataclass
class SearchState:
    """What every trial of one search shares: the workload and its example on the device, the
    baseline's outputs on it and its task metric, the options and the budget; and what the search
    keeps as it goes: the run's rows, the models that pass (by recipe name), the progress bar, and
    `write(run)`, which saves the rows after each step (search/output.write, passed in by the verb).
    `explicit`: the recipes were named (--recipes); `early(model, row)`: the early check, or None;
    `kind`: the workload type whose hooks the shared loop calls (search/workload_type.py)."""

    workload: Workload
    example: Example
    device: torch.device
    config: OptimizeConfig
    budget: Budget
    run: RunResult
    ref_out: Any = None
    base_metric: float | None = None
    models: dict[str, nn.Module] = field(default_factory=dict)
    bar: Any = None
    write: Callable[[RunResult], None] = lambda run: None
    explicit: bool = False
    early: Callable | None = None
    kind: Any = None
    progress: bool = True
