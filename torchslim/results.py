"""What `optimize` found: one RecipeResult per recipe tried, and the whole run's summary."""
from __future__ import annotations

import contextlib
import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator

from .errors import SlimError
from .fidelity import Fidelity
from .measure import Timing


class Status(str, enum.Enum):
    """What became of a recipe. A str: `Status.OK == "ok"`, and JSON writes the plain value."""

    CHOSEN = "chosen"
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
    BASELINE = "baseline"
    INCONCLUSIVE = "inconclusive"  # timing too noisy to call
    INTERRUPTED = "interrupted"  # the run was stopped (SIGINT, SIGTERM) while this recipe was tried

    __str__ = str.__str__  # f"{status}" is "ok", not "Status.OK"
    __format__ = str.__format__


STATUSES = tuple(s.value for s in Status)


def _known(cls, d: dict) -> tuple[dict, dict]:
    """Split a JSON dict into the dataclass's fields and the keys it does not know."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


@dataclass
class RecipeResult:
    name: str
    steps: list[dict]  # the recipe's technique configs, as JSON
    status: Status = Status.OK
    reason: str = ""  # why rejected/failed/skipped, or why chosen
    notes: list[str] = field(default_factory=list)  # what the techniques said (layers left in float, legacy, ...)
    prepare_s: float | None = None  # time to apply the recipe (compilation happens at first call)
    first_call_ms: float | None = None  # includes torch.compile / TorchScript optimisation
    timing: Timing | None = None  # the final interleaved timing: median_ms, p90_ms, ci95_ms, throughput_per_s, ...
    speedup: float | None = None  # baseline median / this median, measured in the same interleaved run
    size_bytes: int | None = None  # serialized weights
    peak_memory_bytes: int | None = None  # extra memory while running (see measure.peak_memory)
    fidelity: Fidelity | None = None  # vs the baseline's outputs on the example
    metrics: dict | None = None  # the task metric(s) from the workload's evaluate()
    metric_drop: float | None = None  # baseline primary metric - this one (positive = worse)
    validation: dict | None = None  # validation.check: held-out inputs and other shapes, one entry per check
    fallback: dict | None = None  # a retry with the most sensitive layers in float: which, why, the trials
    early: dict | None = None  # the brief A/B after the first call: speedup, ci95, calls (optimize._early)
    cached: str | None = None  # set when the row was reused from the search cache: when it was measured
    extra: dict = field(default_factory=dict, repr=False)  # keys read from JSON that no field holds, written back

    def __setattr__(self, name: str, value: Any) -> None:
        # plain values as earlier versions stored them are typed on the way in: "rejected" ->
        # Status.REJECTED, a Timing or Fidelity dict (results.json) -> the dataclass
        if name == "status":
            value = Status(value)
        elif name == "timing" and isinstance(value, dict):
            value = Timing.from_dict(value)
        elif name == "fidelity" and isinstance(value, dict) and "min_cosine" in value:
            value = Fidelity.from_dict(value)  # else a runner's own dict (generation: greedy agreement)
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of results.json (timing and fidelity as their to_dict, status as its value)."""
        d = asdict(self)
        d["status"] = self.status.value
        for key in ("timing", "fidelity"):
            value = getattr(self, key)
            if hasattr(value, "to_dict"):
                d[key] = value.to_dict()
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RecipeResult:
        """A row of results.json, also one an earlier version wrote: missing keys take the defaults,
        keys no field holds are kept in `extra` (and written back by to_dict)."""
        kw, extra = _known(cls, d)
        kw.setdefault("name", "?")
        kw.setdefault("steps", [])
        return cls(**kw, extra=extra)


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
    interrupted: str | None = None  # the signal that stopped the run (SIGINT, SIGTERM), or None
    extra: dict = field(default_factory=dict, repr=False)  # keys read from JSON that no field holds (snippet, ...)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipes"] = [r.to_dict() for r in self.recipes]
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict, recipe: type[RecipeResult] = RecipeResult) -> RunResult:
        """A results.json, also one an earlier version wrote; `recipe` is the row class to read."""
        kw, extra = _known(cls, d)
        kw["recipes"] = [recipe.from_dict(r) for r in kw.get("recipes") or [] if isinstance(r, dict)]
        for key in ("workload", "machine", "config"):
            kw[key] = kw.get(key) or {}
        return cls(**kw, extra=extra)

    @property
    def baseline(self) -> RecipeResult:
        return self.recipes[0]


@contextlib.contextmanager
def kept_on_stop(run: RunResult, write: Callable[[RunResult], None]) -> Iterator[RunResult]:
    """Write `run` when the block ends; if it stops early (Ctrl-C, SIGTERM, a SlimError), record why
    in `run.error` (and the recipe being tried as an "interrupted" row), write what was measured so
    far, and re-raise."""
    from .interrupt import held, signal_name

    try:
        yield run
    except KeyboardInterrupt as e:
        with held():  # a second Ctrl-C does not cut the last write short
            mark_interrupted(run, signal_name(e))
            write(run)
        raise
    except SlimError as e:
        run.error = str(e)
        write(run)
        raise
    write(run)


def mark_interrupted(run: RunResult, how: str) -> None:
    """Record that `how` (SIGINT, SIGTERM) stopped `run`: the recipe it was trying (the first of
    run.search["order"] with no row yet) gets a row with status "interrupted" (a rerun tries it again:
    resume.py reuses only settled rows), and `run.error` says where the run stopped."""
    run.interrupted = how
    done = {r.name for r in run.recipes}
    order = (run.search or {}).get("order") or []
    current = next((n for n in order if n not in done), None)
    base = run.recipes[0] if run.recipes else None
    finished = sum(r.status not in (Status.BASELINE, Status.INTERRUPTED) for r in run.recipes)
    if base is not None and base.first_call_ms is None:
        where = "while measuring the baseline"
    elif current is not None:
        where = f"while trying {current}"
        run.recipes.append(RecipeResult(name=current, steps=[], status=Status.INTERRUPTED,
                                        reason=f"interrupted by {how} while this recipe was tried; a rerun tries it again"))
    elif run.chosen:
        where = "while saving the chosen model"
    elif base is not None and base.timing is None:
        where = "after every recipe's turn, before the final timing ended"
    else:
        where = "after the final timing"
    run.error = (f"interrupted by {how} {where}: the {finished} finished recipe row(s) are kept; "
                 "run the same command again to resume")
