"""The verdict on one recipe's outputs and metric, and the choice among the survivors."""
from __future__ import annotations

from ..results import RecipeResult
from ..workload import Workload


def validate(res: RecipeResult, fid, workload: Workload, config) -> tuple[str, str]:
    """(status, reason) for a recipe's fidelity and metric drop against the thresholds in `config`."""
    if not fid.finite:
        return "rejected", "outputs contain NaN or Inf"
    if fid.exact_match is not None and fid.exact_match < 1.0:
        return "rejected", f"integer outputs changed: {fid.exact_match:.2%} of the elements match the baseline's"
    if fid.min_cosine < config.min_cosine:
        return "rejected", f"outputs drifted: min cosine {fid.min_cosine:.4f} < {config.min_cosine}"
    if res.metric_drop is not None and res.metric_drop > config.max_drop:
        return "rejected", f"{workload.metric} dropped {res.metric_drop:.2f} {workload.metric_unit} > --max-drop {config.max_drop}".replace("  ", " ")
    return "ok", ""


_KEYS = {
    "latency": lambda r: r.timing.median_ms,
    "throughput": lambda r: -r.timing.throughput_per_s,
    "size": lambda r: (r.size_bytes, r.timing.median_ms),
    "memory": lambda r: (r.peak_memory_bytes, r.timing.median_ms),
}


def ranked(results: list[RecipeResult], objective: str, statuses: tuple[str, ...] = ("ok",)) -> list[RecipeResult]:
    """The timed recipes with one of `statuses`, best first under `objective`."""
    return sorted((r for r in results if r.status in statuses and r.timing), key=_KEYS[objective])


def choose(results: list[RecipeResult], objective: str) -> RecipeResult | None:
    """The best timed "ok" recipe under `objective`, or None."""
    ok = ranked(results, objective)
    return ok[0] if ok else None


def why(r: RecipeResult, base: RecipeResult, objective: str) -> str:
    """The chosen recipe's reason: how much faster and smaller, and its fidelity."""
    size = base.size_bytes / r.size_bytes if r.size_bytes else float("nan")
    return (f"best {objective} among recipes that kept the outputs: {r.speedup:.2f}x faster, "
            f"{size:.2f}x smaller, min cosine {r.fidelity.min_cosine:.4f}")
