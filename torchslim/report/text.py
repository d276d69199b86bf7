"""Terminal tables: one fixed-width table function for the recipes, sensitivity, recalibration and generation."""
from __future__ import annotations

from ..results import RunResult
from .values import (as_run, chosen_line, finite, fixed, latency, machine_line, metric_cell, min_cosine, nbytes, num,
                     ratio, speedup, truncate)


def fixed_table(cols: list[str], rows: list[list], head: list[str] = (), tail: list[str] = ()) -> str:
    """`head` lines, a blank line, the column names, dashes, one line per row (cells left-aligned
    to the widest in their column, two spaces apart), then `tail` lines."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(cols, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([*head, "", line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows), *tail])


# -- the optimize run -------------------------------------------------------------------------------

def _hardware_line(m: dict) -> str:
    c = m.get("capabilities") or {}
    if not c:
        return ""
    have = [k for k in ("avx2", "avx512", "vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_fp16") if c.get(k)]
    line = f"{', '.join(have) or 'no AVX2'}; native BF16 {'yes' if c.get('bf16') else 'no'}, FP16 {'yes' if c.get('fp16') else 'no'}"
    line += f"; {c.get('cores')} cores" + (f"; CUDA sm {c['cuda_capability']}" if c.get("cuda_capability") else "")
    return line + ("" if m.get("cpu_flags_source", "/proc/cpuinfo") == "/proc/cpuinfo" else f" (flags from {m['cpu_flags_source']})")


def search_lines(run: RunResult | dict) -> list[tuple[str, str]]:
    """(label, text) lines on the hardware, the search's budget and cache, and the timing's verdict."""
    run = as_run(run)
    out = []
    hw = _hardware_line(run.machine)
    if hw:
        out.append(("hardware", hw))
    s = run.search or {}
    if s.get("ordered_by"):  # optimize's search (generation's records only its order)
        phases = s.get("phases_s") or {}
        budget = s.get("time_budget_min")
        text = (f"{s.get('model_kind', '?')} model on {s.get('hardware_tier', '?')} hardware, order from {s.get('ordered_by', '?')}; "
                f"time budget {'none' if not budget else f'{budget:g} min'}"
                + (f", took {phases['total']:.0f} s" if phases.get("total") is not None else ""))
        skipped = sum(1 for r in run.recipes if str(r.reason or "").startswith("time budget"))
        text += f"; {skipped} recipe(s) skipped for time" if skipped else ""
        out.append(("search", text))
        if s.get("reordered"):
            out.append(("order", f"re-ranked by expected gain {len(s['reordered'])} time(s): " + " | ".join(s["reordered"])))
        if (s.get("more_time") or {}).get("line"):
            out.append(("more time", s["more_time"]["line"]))
        if s.get("from_cache"):
            out.append(("cache", f"rows reused from the search measured {s['from_cache']} (--fresh searches anew)"))
    m = run.measurement or {}
    if m and (not m.get("reliable") or m.get("suggestion")):
        out.append(("timing", "; ".join(x for x in (m.get("why"), m.get("suggestion")) if x)))
    return out


def header_lines(run: RunResult) -> list[str]:
    w = run.workload
    spec = f" ({w['spec']})" if w.get("spec") else ""
    lines = [f"workload: {w.get('name') or '-'}{spec}   inputs: {w.get('example') or '-'}",
             f"device:   {machine_line(run.machine)}",
             f"chosen:   {chosen_line(run)}"]
    lines += [f"{k + ':':9} {v}" for k, v in search_lines(run)]
    if run.error:
        lines.append(f"ERROR:    {run.error} (the run stopped early; results are partial)")
    return lines


def recipe_rows(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of display strings per recipe, shared by the table and the HTML."""
    metric = run.workload.get("metric")
    cols = ["recipe", "status", "median ms [95% CI]", "speedup", "size", "peak mem", "min cos"]
    cols += [str(metric)] if metric else []
    rows = []
    for r in run.recipes:
        row = [str(r.name or "?"), str(r.status) + (" (cached)" if r.cached else ""), latency(r), ratio(speedup(r)),
               nbytes(r.size_bytes), nbytes(r.peak_memory_bytes), fixed(min_cosine(r), 4)]
        rows.append(row + ([metric_cell(r, metric)] if metric else []))
    return cols, rows


def format_table(run: RunResult | dict) -> str:
    """A fixed-width table of the run, one row per recipe, with a header naming workload and choice."""
    run = as_run(run)
    cols, rows = recipe_rows(run)
    rows = [row + [truncate(r.reason, 60) or "-"] for row, r in zip(rows, run.recipes)]
    return fixed_table(cols + ["reason"], rows, header_lines(run), _fallback_lines(run))


def _fallback_lines(run: RunResult) -> list[str]:
    out = []
    for r in run.recipes:
        fb = r.fallback
        if not isinstance(fb, dict):
            continue
        kept = [str(k.get("name")) for k in fb.get("kept_in_float") or [] if isinstance(k, dict)]
        what = (f"kept in float: {', '.join(kept)} -> {r.status}" if kept
                else truncate(fb.get("result") or fb.get("error") or "no retry", 100))
        out.append(f"fallback for {fb.get('from') or '?'} ({r.name or '?'}): {what}")
    return [""] + out if out else []


# -- sensitivity and recalibration (plain dicts: sensitivity.json, recalibration.json) ---------------

def db(x) -> str:
    return "inf" if x is None else fixed(x, 1)


def sensitivity_rows(layers: list, metric: str | None, kept: set[str] = frozenset()) -> tuple[list[str], list[list[str]]]:
    cols = ["rank", "layer", "type", "SQNR dB (alone)", "min cos"] + ([f"{metric} (drop)"] if metric else [])
    cols += ["kept in float"] if kept else []
    rows = []
    for r in layers:
        if not isinstance(r, dict):
            continue
        row = [str(r.get("rank") or "-"), str(r.get("name") or "?"), str(r.get("kind") or "-"), db(r.get("sqnr_db")),
               fixed(r.get("min_cosine"), 5)]
        if metric:
            drop = finite(r.get("metric_drop"))
            row.append("-" if finite(r.get("metric")) is None else f"{num(r['metric'])} ({'-' if drop is None else num(drop)})")
        rows.append(row + (["yes" if r.get("name") in kept else ""] if kept else []))
    return cols, rows


def format_sensitivity(sens: dict) -> str:
    """`torchslim sensitivity` as a terminal table, most damaging layer first."""
    metric = sens.get("metric")
    alls = sens.get("all_quantized") or {}
    head = [f"sensitivity of {sens.get('workload') or 'model'} to {sens.get('label') or '?'}: {sens.get('method') or ''}",
            f"ranked by {sens.get('ranked_by') or 'output SQNR'}; {sens.get('samples') or '?'} samples",
            f"all layers quantized: SQNR {db(alls.get('sqnr_db'))} dB, min cosine {fixed(alls.get('min_cosine'), 5)}"
            + (f", {metric} {num(alls.get('metric'))} (FP32 {num(sens.get('baseline_metric'))})" if metric else "")]
    return fixed_table(*sensitivity_rows(sens.get("layers") or [], metric), head)


def _saturation(d: dict) -> str:
    if d.get("max_saturation") is None:
        return "n/a (not observable in TorchScript INT8 ops)" if d.get("saturation_unavailable") else "-"
    return f"{100 * d['max_saturation']:.2f}% ({d.get('most_saturated_layer') or '-'})"


def format_recalibration(rep: dict) -> str:
    """Before/after, one row each: fidelity vs FP32 and saturation on the new data, and the metric."""
    metric = rep.get("metric")
    cols = ["calibration", "SQNR dB", "min cos", "top-1 agree", "max saturation"] + ([str(metric)] if metric else [])
    rows = []
    for key, label in (("before", "old data"), ("after", "new data")):
        d = rep.get(key) or {}
        row = [label, fixed(d.get("sqnr_db"), 1), fixed(d.get("min_cosine"), 4), fixed(d.get("top1_agreement"), 4),
               _saturation(d)]
        rows.append(row + ([fixed(d.get("metric"), 2)] if metric else []))
    head = [f"recalibrated {rep.get('recipe')} on {rep.get('samples')} samples of {rep.get('data')}; "
            f"compared with FP32 on the new data"]
    tail = []
    if metric and rep.get("fp32_metric") is not None:
        tail.append(f"FP32 {metric}: {fixed(rep['fp32_metric'], 2)} ({rep.get('metric_source')})")
    return fixed_table(cols, rows, head, tail)
