"""Spending a time budget by expected gain (issue 27): after each trial the candidates left are
re-ranked, and when the budget ends with some untried the run says what more time would buy.

The estimate is deliberately plain. Candidates start in the priors order (priors.json), and one
whose priors rank is after the best accepted recipe's is not expected to beat it. What this run has
measured can say otherwise: a quantization recipe rejected on fidelity at a speedup well above the
best accepted one puts a ceiling of that speedup on its float fallback (the same recipe with its
most sensitive layers in float), and on the accuracy-aware INT8 recipes of the same family (NNCF
with its ignored scope, accuracy control). Those whose ceiling beats the best accepted speedup by
`MARGIN` move ahead of the rest, highest ceiling first; everything else keeps its order.
Pure functions on plain dicts, so the rule is tested without a model.
"""
from __future__ import annotations

import math

MARGIN = 1.25  # a measured ceiling must beat the best accepted speedup by 25% to jump the queue
DEFAULT_TRIAL_S = {"int8": 30.0, "float": 20.0}  # a trial's cost before this run has measured one of its kind
SHOWN = 5  # candidates named in the line; the rest counted
FALLBACK_TRIALS = 3  # a fallback costs about its recipe's trial this many times (ranking, retry, validation)


def family(name: str) -> str:
    """'int8' for the quantized recipes, 'float' for the rest: what one trial says about another."""
    return "int8" if "int8" in name or "int4" in name else "float"


def label(item: dict) -> str:
    """How an item of the queue is named in the order and the report."""
    return f"fallback of {item['from']}" if item["kind"] == "fallback" else item["name"]


def best_accepted(rows: list[dict]) -> float | None:
    """The highest measured speedup of the accepted rows so far (None before one is accepted)."""
    got = [r["speedup"] for r in rows if r.get("status") in ("ok", "chosen") and r.get("speedup")]
    return max(got) if got else None


def estimate(item: dict, rows: list[dict]) -> tuple[float | None, str]:
    """(speedup ceiling measured in this run, why), or (None, why) where only the priors rank speaks."""
    by_name = {r["name"]: r for r in rows}
    if item["kind"] == "fallback":
        s = (by_name.get(item["from"]) or {}).get("speedup")
        return s, f"{item['from']} measured {s:.2f}x before its rejection" if s else "its recipe has no speedup"
    if item.get("accuracy_aware"):  # a step's config says so (TechniqueConfig.accuracy_aware)
        fast = [r for r in rows if r.get("status") == "rejected" and family(r["name"]) == "int8" and r.get("speedup")
                and not str(r.get("reason", "")).startswith("slower than the baseline")]
        if fast:
            top = max(fast, key=lambda r: r["speedup"])
            return top["speedup"], f"accuracy-aware INT8; {top['name']} was rejected at {top['speedup']:.2f}x"
    return None, "priors order"


def rerank(pending: list[dict], rows: list[dict]) -> tuple[list[dict], str | None]:
    """`pending` (dicts with kind 'recipe' or 'fallback', name, and for a fallback `from`) in the
    order to try next, given the rows measured so far (name, status, speedup, reason), and why it
    changed (None when it did not). A candidate moves ahead of the others when its ceiling exceeds
    the best accepted speedup times MARGIN; the moved ones go highest ceiling first."""
    best = best_accepted(rows)
    if best is None:
        return list(pending), None
    up = []
    for i, item in enumerate(pending):
        s, why = estimate(item, rows)
        if s is not None and s >= best * MARGIN:
            up.append((-s, item["kind"] != "fallback", i, item, why))
    if not up:
        return list(pending), None
    up.sort(key=lambda t: t[:3])
    moved = [t[3] for t in up]
    new = moved + [p for p in pending if not any(p is m for m in moved)]
    if [label(p) for p in new] == [label(p) for p in pending]:
        return new, None
    why = "; ".join(f"{label(t[3])} ({t[4]})" for t in up)
    return new, f"moved ahead of the rest, beating the best accepted {best:.2f}x by {MARGIN:g}x or more: {why}"


def trial_seconds(name: str, measured: dict[str, float]) -> float:
    """A recipe's likely cost: the mean of this run's trials of its family, else of all, else a default."""
    same = [v for k, v in measured.items() if family(k) == family(name)]
    pool = same or list(measured.values())
    return sum(pool) / len(pool) if pool else DEFAULT_TRIAL_S[family(name)]


def more_time(untried: list[dict], measured: dict[str, float], budget_min: float) -> dict | None:
    """What a larger --time-budget would buy: the untried candidates (dicts as for `rerank`), their
    estimated seconds (a fallback: FALLBACK_TRIALS times its recipe's trial) and the budget to ask for."""
    if not untried:
        return None
    cost = 0.0
    for item in untried:
        if item["kind"] == "fallback":
            cost += FALLBACK_TRIALS * measured.get(item["from"], trial_seconds(item["from"], measured))
        else:
            cost += trial_seconds(item["name"], measured)
    budget = math.ceil((budget_min + cost / 60.0) * 2) / 2  # to the next half minute
    names = [("the " if i["kind"] == "fallback" else "") + label(i) for i in untried]
    listed = names if len(names) <= SHOWN else names[:SHOWN - 1] + [f"{len(names) - SHOWN + 1} more"]
    shown = ", ".join(listed[:-1]) + f" and {listed[-1]}" if len(listed) > 1 else listed[0]
    about = f"about {cost / 60:.0f} more minute{'s' if round(cost / 60) != 1 else ''}" if cost >= 90 else f"about {cost:.0f} s more"
    return {"time_budget_min": budget, "candidates": names, "seconds": round(cost, 1),
            "line": f"--time-budget {budget:g} would also try {shown}: {about} (estimated from this run's trials)"}
