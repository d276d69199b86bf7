"""Display values shared by the table, the charts and the HTML: numbers, sizes, and what a run's rows say."""
from __future__ import annotations

import math

from ..fidelity import Fidelity
from ..results import RecipeResult, RunResult, Status

NO_CHOICE = "none: nothing beat the baseline under the thresholds"
COLORS = {"chosen": "#1a9850", "ok": "#4575b4", "rejected": "#f08a24", "failed": "#d73027",
          "baseline": "#444444", "skipped": "#aaaaaa", "inconclusive": "#9e6ebd"}


def as_run(run: RunResult | dict | None) -> RunResult:
    """A RunResult from itself or from a results.json dict (also one an earlier version wrote)."""
    return run if isinstance(run, RunResult) else RunResult.from_dict(run or {})


def finite(x) -> float | None:
    """x as a float if it is a real, finite number; None for null, NaN, inf, text and bools."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def num(x) -> str:
    """About three significant digits, never scientific: 1234, 12.3, 1.23, 0.0123."""
    if finite(x) is None:
        return "-" if isinstance(x, bool) or not isinstance(x, (int, float)) else str(x)
    digits = min(8, max(0, 2 - math.floor(math.log10(abs(x))))) if x else 2
    return f"{x:.{digits}f}"


def fixed(x, digits: int) -> str:
    x = finite(x)
    return "-" if x is None else f"{x:.{digits}f}"


def nbytes(n) -> str:
    """Decimal units, as disks and downloads count them: 86.2 MB."""
    n = finite(n)
    if n is None or abs(n) < 1000:
        return "-" if n is None else f"{n:.0f} B"
    power = min(4, int(math.log(abs(n), 1000)))
    return f"{n / 1000 ** power:.1f} {' kMGT'[power]}B"


def ratio(x) -> str:
    return "-" if finite(x) is None else f"{num(x)}x"


def truncate(text, limit: int) -> str:
    text = " ".join(str(text or "").split())  # one line in a table, whatever the reason held
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- what a run's rows say ------------------------------------------------------------------------

def baseline(run: RunResult) -> RecipeResult | None:
    return next((r for r in run.recipes if r.status == Status.BASELINE), run.recipes[0] if run.recipes else None)


def speedup(r: RecipeResult) -> float | None:
    s = finite(r.speedup)
    if s is None and r.status == Status.BASELINE and r.timing is not None:
        return 1.0  # the reference: the runner may leave its own speedup unset
    return s


def min_cosine(r: RecipeResult) -> float | None:
    v = finite(r.fidelity.min_cosine) if isinstance(r.fidelity, Fidelity) else None
    # the baseline's outputs are the reference, so it matches itself exactly
    return 1.0 if v is None and r.status == Status.BASELINE else v


def size_ratio(run: RunResult, r: RecipeResult) -> float | None:
    base = baseline(run)
    base, size = finite(base.size_bytes if base else None), finite(r.size_bytes)
    return size / base if size is not None and base else None


def metric_value(r: RecipeResult, metric: str | None) -> float | None:
    return finite((r.metrics or {}).get(metric)) if metric else None


def latency(r: RecipeResult) -> str:
    if r.timing is None or finite(r.timing.median_ms) is None:
        return "-"
    median, ci = r.timing.median_ms, r.timing.ci95_ms
    if all(finite(v) is not None for v in ci):
        return f"{num(median)} [{num(ci[0])}-{num(ci[1])}]"
    return num(median)


def metric_cell(r: RecipeResult, metric: str) -> str:
    value = metric_value(r, metric)
    if value is None:
        return "-"
    drop = finite(r.metric_drop)
    return num(value) if drop is None else f"{num(value)} (drop {num(drop)})"


def chosen_line(run: RunResult) -> str:
    if not run.chosen:
        return NO_CHOICE
    r = next((r for r in run.recipes if r.name == run.chosen), None)
    if r is None:
        return f"{run.chosen} (not among the recipes)"
    parts = [f"{ratio(speedup(r))} faster", f"{ratio(size_ratio(run, r))} size", f"min cosine {fixed(min_cosine(r), 4)}"]
    if finite(r.metric_drop) is not None:
        parts.append(f"metric drop {num(r.metric_drop)}")
    return f"{run.chosen}: " + ", ".join(parts)


def machine_line(m: dict) -> str:
    hw = m.get("gpu") or m.get("cpu") or m.get("machine") or "?"
    line = f"{m.get('device') or '-'} ({hw}), {m.get('threads') or '-'} threads, torch {m.get('torch') or '-'}"
    return line + (f", torchao {m['torchao']}" if m.get("torchao") else "")


def quality(run: RunResult):
    """(axis label, recipe -> value): the primary task metric when recipes report it, else min cosine."""
    metric = run.workload.get("metric")
    if metric and any(metric_value(r, metric) is not None for r in run.recipes):
        return str(metric), lambda r: metric_value(r, metric)
    return "min cosine vs baseline", min_cosine
