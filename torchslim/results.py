"""What `optimize` found: one RecipeResult per recipe tried, and the whole run's summary."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from .errors import SlimError

STATUSES = ("chosen", "ok", "rejected", "failed", "skipped", "baseline", "inconclusive")  # inconclusive: timing too noisy to call


@dataclass
class RecipeResult:
    name: str
    steps: list[dict]  # the recipe's technique configs, as JSON
    status: str = "ok"  # one of STATUSES
    reason: str = ""  # why rejected/failed/skipped, or why chosen
    notes: list[str] = field(default_factory=list)  # what the techniques said (layers left in float, legacy, ...)
    prepare_s: float | None = None  # time to apply the recipe (compilation happens at first call)
    first_call_ms: float | None = None  # includes torch.compile / TorchScript optimisation
    timing: dict | None = None  # measure.Timing.to_dict(): median_ms, p90_ms, ci95_ms, throughput_per_s, ...
    speedup: float | None = None  # baseline median / this median, measured in the same interleaved run
    size_bytes: int | None = None  # serialized weights
    peak_memory_bytes: int | None = None  # extra memory while running (see measure.peak_memory)
    fidelity: dict | None = None  # fidelity.Fidelity.to_dict() vs the baseline's outputs on the example
    metrics: dict | None = None  # the task metric(s) from the workload's evaluate()
    metric_drop: float | None = None  # baseline primary metric - this one (positive = worse)
    validation: dict | None = None  # validation.check: held-out inputs and other shapes, one entry per check
    fallback: dict | None = None  # a retry with the most sensitive layers in float: which, why, the trials
    early: dict | None = None  # the brief A/B after the first call: speedup, ci95, calls (optimize._early)
    cached: str | None = None  # set when the row was reused from the search cache: when it was measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    workload: dict  # name, spec, example, metric
    machine: dict  # device.describe()
    config: dict  # the OptimizeConfig used
    recipes: list[RecipeResult]  # baseline first
    chosen: str | None = None  # name of the chosen recipe, or None if nothing beat the baseline
    artifact: str | None = None  # folder of the saved chosen model
    created: str = ""
    error: str | None = None  # set when the run stopped early; the recipes done so far are kept
    search: dict | None = None  # order, time budget, elapsed, model kind/hardware tier, cache (optimize._search)
    measurement: dict | None = None  # is the final timing trustworthy (measure.verdict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipes"] = [r.to_dict() for r in self.recipes]
        return d

    @property
    def baseline(self) -> RecipeResult:
        return self.recipes[0]


@contextlib.contextmanager
def kept_on_stop(run: RunResult, write: Callable[[RunResult], None]) -> Iterator[RunResult]:
    """Write `run` when the block ends; if it stops early (Ctrl-C, a SlimError), record why in
    `run.error`, write what was measured so far, and re-raise."""
    try:
        yield run
    except KeyboardInterrupt:
        run.error = "interrupted: the recipes measured so far are kept"
        write(run)
        raise
    except SlimError as e:
        run.error = str(e)
        write(run)
        raise
    write(run)
