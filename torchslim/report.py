"""Render a `torchslim optimize` run as a terminal table or as one self-contained HTML file.

Everything here reads the plain dict of RunResult.to_dict() (what results.json holds), not the
dataclasses, so a report can be rebuilt from a results.json on disk. Any value may be missing or
null: failed and skipped recipes have no timing, and a run that stopped early has only some recipes.
"""
from __future__ import annotations

import html
import json
import math

COLORS = {"chosen": "#1a9850", "ok": "#4575b4", "rejected": "#f08a24", "failed": "#d73027",
          "baseline": "#444444", "skipped": "#aaaaaa", "inconclusive": "#9e6ebd"}
NO_CHOICE = "none: nothing beat the baseline under the thresholds"
_esc = html.escape  # quote=True: values also land inside attributes


# -- values ------------------------------------------------------------------------------------

def _finite(x) -> float | None:
    """x as a float if it is a real, finite number; None for null, NaN, inf, text and bools."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _get(d, *keys):
    """d[k1][k2]..., or None where a level is missing or null."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(x) -> str:
    """About three significant digits, never scientific: 1234, 12.3, 1.23, 0.0123."""
    if _finite(x) is None:
        return "-" if isinstance(x, bool) or not isinstance(x, (int, float)) else str(x)
    digits = min(8, max(0, 2 - math.floor(math.log10(abs(x))))) if x else 2
    return f"{x:.{digits}f}"


def _fixed(x, digits: int) -> str:
    x = _finite(x)
    return "-" if x is None else f"{x:.{digits}f}"


def _bytes(n) -> str:
    """Decimal units, as disks and downloads count them: 86.2 MB."""
    n = _finite(n)
    if n is None or abs(n) < 1000:
        return "-" if n is None else f"{n:.0f} B"
    power = min(4, int(math.log(abs(n), 1000)))
    return f"{n / 1000 ** power:.1f} {' kMGT'[power]}B"


def _ratio(x) -> str:
    return "-" if _finite(x) is None else f"{_num(x)}x"


def _truncate(text, limit: int) -> str:
    text = " ".join(str(text or "").split())  # one line in a table, whatever the reason held
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the run -----------------------------------------------------------------------------------

def _recipes(run: dict) -> list[dict]:
    return [r for r in run.get("recipes") or [] if isinstance(r, dict)]


def _baseline(run: dict) -> dict | None:
    recipes = _recipes(run)
    return next((r for r in recipes if r.get("status") == "baseline"), recipes[0] if recipes else None)


def _speedup(r: dict) -> float | None:
    s = _finite(r.get("speedup"))
    if s is None and r.get("status") == "baseline" and _get(r, "timing", "median_ms") is not None:
        return 1.0  # the reference: the runner may leave its own speedup unset
    return s


def _min_cosine(r: dict) -> float | None:
    v = _finite(_get(r, "fidelity", "min_cosine"))
    # the baseline's outputs are the reference, so it matches itself exactly
    return 1.0 if v is None and r.get("status") == "baseline" else v


def _size_ratio(run: dict, r: dict) -> float | None:
    base, size = _finite(_get(_baseline(run), "size_bytes")), _finite(r.get("size_bytes"))
    return size / base if size is not None and base else None


def _latency(r: dict) -> str:
    median, ci = _finite(_get(r, "timing", "median_ms")), _get(r, "timing", "ci95_ms") or []
    if median is not None and len(ci) == 2 and all(_finite(v) is not None for v in ci):
        return f"{_num(median)} [{_num(ci[0])}-{_num(ci[1])}]"
    return _num(median) if median is not None else "-"


def _metric_cell(r: dict, metric: str) -> str:
    value = _get(r, "metrics", metric)
    if _finite(value) is None:
        return "-"
    drop = _finite(r.get("metric_drop"))
    return _num(value) if drop is None else f"{_num(value)} (drop {_num(drop)})"


def _chosen_line(run: dict) -> str:
    name = run.get("chosen")
    if not name:
        return NO_CHOICE
    r = next((r for r in _recipes(run) if r.get("name") == name), None)
    if r is None:
        return f"{name} (not among the recipes)"
    parts = [f"{_ratio(_speedup(r))} faster", f"{_ratio(_size_ratio(run, r))} size",
             f"min cosine {_fixed(_min_cosine(r), 4)}"]
    if _finite(r.get("metric_drop")) is not None:
        parts.append(f"metric drop {_num(r['metric_drop'])}")
    return f"{name}: " + ", ".join(parts)


def _machine_line(m: dict) -> str:
    hw = m.get("gpu") or m.get("cpu") or m.get("machine") or "?"
    line = f"{m.get('device') or '-'} ({hw}), {m.get('threads') or '-'} threads, torch {m.get('torch') or '-'}"
    return line + (f", torchao {m['torchao']}" if m.get("torchao") else "")


def _header_lines(run: dict) -> list[str]:
    w = run.get("workload") or {}
    spec = f" ({w['spec']})" if w.get("spec") else ""
    lines = [f"workload: {w.get('name') or '-'}{spec}   inputs: {w.get('example') or '-'}",
             f"device:   {_machine_line(run.get('machine') or {})}",
             f"chosen:   {_chosen_line(run)}"]
    lines += [f"{k + ':':9} {v}" for k, v in search_lines(run)]
    if run.get("error"):
        lines.append(f"ERROR:    {run['error']} (the run stopped early; results are partial)")
    return lines


def _hardware_line(m: dict) -> str:
    c = m.get("capabilities") or {}
    if not c:
        return ""
    have = [k for k in ("avx2", "avx512", "vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_fp16") if c.get(k)]
    line = f"{', '.join(have) or 'no AVX2'}; native BF16 {'yes' if c.get('bf16') else 'no'}, FP16 {'yes' if c.get('fp16') else 'no'}"
    line += f"; {c.get('cores')} cores" + (f"; CUDA sm {c['cuda_capability']}" if c.get("cuda_capability") else "")
    return line + ("" if m.get("cpu_flags_source", "/proc/cpuinfo") == "/proc/cpuinfo" else f" (flags from {m['cpu_flags_source']})")


def search_lines(run: dict) -> list[tuple[str, str]]:
    """(label, text) lines on the hardware, the search's budget and cache, and the timing's verdict."""
    out = []
    hw = _hardware_line(run.get("machine") or {})
    if hw:
        out.append(("hardware", hw))
    s = run.get("search") or {}
    if s:
        phases = s.get("phases_s") or {}
        budget = s.get("time_budget_min")
        text = (f"{s.get('model_kind', '?')} model on {s.get('hardware_tier', '?')} hardware, order from {s.get('ordered_by', '?')}; "
                f"time budget {'none' if not budget else f'{budget:g} min'}"
                + (f", took {phases['total']:.0f} s" if phases.get("total") is not None else ""))
        skipped = sum(1 for r in _recipes(run) if str(r.get("reason") or "").startswith("time budget"))
        text += f"; {skipped} recipe(s) skipped for time" if skipped else ""
        out.append(("search", text))
        if s.get("from_cache"):
            out.append(("cache", f"rows reused from the search measured {s['from_cache']} (--fresh searches anew)"))
    m = run.get("measurement") or {}
    if m and (not m.get("reliable") or m.get("suggestion")):
        out.append(("timing", "; ".join(x for x in (m.get("why"), m.get("suggestion")) if x)))
    return out


def _rows(run: dict) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of display strings per recipe, shared by the table and the HTML."""
    metric = _get(run, "workload", "metric")
    cols = ["recipe", "status", "median ms [95% CI]", "speedup", "size", "peak mem", "min cos"]
    cols += [str(metric)] if metric else []
    rows = []
    for r in _recipes(run):
        row = [str(r.get("name") or "?"), str(r.get("status") or "-") + (" (cached)" if r.get("cached") else ""), _latency(r), _ratio(_speedup(r)),
               _bytes(r.get("size_bytes")), _bytes(r.get("peak_memory_bytes")), _fixed(_min_cosine(r), 4)]
        rows.append(row + ([_metric_cell(r, metric)] if metric else []))
    return cols, rows


def format_table(run: dict) -> str:
    """A fixed-width table of the run, one row per recipe, with a header naming workload and choice."""
    cols, rows = _rows(run)
    cols = cols + ["reason"]
    rows = [row + [_truncate(r.get("reason"), 60) or "-"] for row, r in zip(rows, _recipes(run))]
    widths = [max(len(c) for c in column) for column in zip(cols, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join(_header_lines(run) + ["", line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
                     + _fallback_lines(run))


def _fallback_lines(run: dict) -> list[str]:
    out = []
    for r in _recipes(run):
        fb = r.get("fallback")
        if not isinstance(fb, dict):
            continue
        kept = [str(k.get("name")) for k in fb.get("kept_in_float") or [] if isinstance(k, dict)]
        what = (f"kept in float: {', '.join(kept)} -> {r.get('status') or '-'}" if kept
                else _truncate(fb.get("result") or fb.get("error") or "no retry", 100))
        out.append(f"fallback for {fb.get('from') or '?'} ({r.get('name') or '?'}): {what}")
    return [""] + out if out else []


# -- charts ------------------------------------------------------------------------------------

def _quality(run: dict):
    """(axis label, recipe -> value): the primary task metric when recipes report it, else min cosine."""
    metric = _get(run, "workload", "metric")
    if metric and any(_finite(_get(r, "metrics", metric)) is not None for r in _recipes(run)):
        return str(metric), lambda r: _finite(_get(r, "metrics", metric))
    return "min cosine vs baseline", _min_cosine


def _frontier(points: list[tuple]) -> list[tuple]:
    """Points (x, y, ...) that no other point beats in both speed and quality, left to right."""
    def beaten(p):
        return any(q[0] >= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points)
    return sorted((p for p in points if not beaten(p)), key=lambda p: p[0])


def _x_ticks(lo: float, hi: float) -> list[float]:
    nice = [0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100]
    ticks = [t for t in nice if lo <= t <= hi]
    return ticks[:: max(1, math.ceil(len(ticks) / 7))]


def _y_ticks(lo: float, hi: float) -> tuple[list[float], int]:
    """About five round values (multiples of 1, 2 or 5 x 10^k) in [lo, hi], and the decimals they need."""
    step = 10 ** math.floor(math.log10((hi - lo) / 5))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 5)
    first = math.ceil(lo / step)
    ticks = [k * step for k in range(first, first + 7) if k * step <= hi]
    return ticks, max(0, -math.floor(math.log10(step)))


def _text(x: float, y: float, body: str, cls: str = "label", anchor: str = "start", extra: str = "") -> str:
    """An SVG <text>; `body` must already be escaped."""
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}"{extra}>{body}</text>'


def _pareto_svg(run: dict) -> str:
    label, quality = _quality(run)
    points = []  # (speedup, quality, name, status)
    for r in _recipes(run):
        x, y = _speedup(r), quality(r)
        if x is not None and x > 0 and y is not None:
            points.append((x, y, str(r.get("name") or "?"), str(r.get("status") or "")))
    if not points:
        return "<p>No recipe has both a timing and a quality value to plot.</p>"
    W, H, L, R, T, B = 760, 420, 80, 30, 20, 55
    xlo, xhi = min(p[0] for p in points + [(1.0,)]) / 1.15, max(p[0] for p in points + [(1.0,)]) * 1.15
    ylo, yhi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (yhi - ylo) * 0.12 or abs(yhi) * 0.01 or 0.01
    ylo, yhi = ylo - pad, yhi + pad
    sx = lambda v: L + (math.log(v) - math.log(xlo)) / (math.log(xhi) - math.log(xlo)) * (W - L - R)
    sy = lambda v: T + (yhi - v) / (yhi - ylo) * (H - T - B)
    yticks, decimals = _y_ticks(ylo, yhi)
    out = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
           f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" class="plot"/>']
    for t in _x_ticks(xlo, xhi):
        out.append(_text(sx(t), H - B + 18, f"{_num(t)}x", "tick", "middle"))
    for v in yticks:
        out.append(f'<line x1="{L}" y1="{sy(v):.1f}" x2="{W - R}" y2="{sy(v):.1f}" class="grid"/>')
        out.append(_text(L - 6, sy(v) + 4, f"{v:.{decimals}f}", "tick", "end"))
    out.append(f'<line x1="{sx(1.0):.1f}" y1="{T}" x2="{sx(1.0):.1f}" y2="{H - B}" class="base"/>')
    out.append(_text(sx(1.0) + 4, H - B - 6, "baseline speed", "tick"))
    front = _frontier([p for p in points if p[3] != "failed"])  # a failed recipe is no trade-off
    coords = " ".join(f"{sx(p[0]):.1f},{sy(p[1]):.1f}" for p in front)
    out.append(f'<polyline points="{coords}" class="frontier"><title>Pareto frontier</title></polyline>')
    for x, y, name, status in points:
        cx, cy = sx(x), sy(y)
        side = (-10, "end") if cx > W / 2 else (10, "start")  # labels on the inner side, so they stay inside
        out.append(f'<circle class="pt {_esc(status)}" cx="{cx:.1f}" cy="{cy:.1f}" r="{8 if status == "chosen" else 6}"'
                   f' fill="{COLORS.get(status, "#888888")}"><title>{_esc(name)}: {_num(x)}x, {_esc(label)}'
                   f' {y:.{decimals + 1}f} ({_esc(status)})</title></circle>')
        out.append(_text(cx + side[0], cy - 8, _esc(_truncate(name, 32)), anchor=side[1]))
    out.append(_text((L + W - R) / 2, H - 12, "speedup vs baseline (log scale)", "axis", "middle"))
    out.append(_text(0, 0, _esc(label), "axis", "middle", f' transform="translate(16 {(T + H - B) / 2}) rotate(-90)"'))
    return "\n".join(out + ["</svg>"])


def _size_svg(run: dict) -> str:
    bars = [(r, _finite(r.get("size_bytes"))) for r in _recipes(run) if _finite(r.get("size_bytes")) is not None]
    if not bars:
        return "<p>No recipe has a measured size.</p>"
    W, L, area, bar, gap = 760, 230, 320, 20, 8
    biggest = max(size for _, size in bars) or 1.0
    H = len(bars) * (bar + gap) + gap
    out = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">']
    for i, (r, size) in enumerate(bars):
        y, w, status = gap + i * (bar + gap), size / biggest * area, str(r.get("status") or "")
        out.append(_text(L - 8, y + 15, _esc(_truncate(r.get("name"), 30)), anchor="end"))
        out.append(f'<rect x="{L}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS.get(status, "#888888")}">'
                   f'<title>{_esc(str(r.get("name")))}: {int(size)} bytes</title></rect>')
        out.append(_text(L + w + 6, y + 15, f"{_bytes(size)} ({_ratio(_size_ratio(run, r))} of baseline)"))
    return "\n".join(out + ["</svg>"])


# -- HTML --------------------------------------------------------------------------------------

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.chosen td{background:#e8f5e9;font-weight:600}pre{background:#f6f8fa;padding:8px;overflow:auto}
.error{border:2px solid #d73027;background:#fdecea;padding:10px;font-weight:600}
.chosen-box{border:2px solid #1a9850;background:#e8f5e9;padding:10px;font-size:1.1em}
.plot{fill:none;stroke:#bbb}.tick{font-size:11px;fill:#555}.axis{font-size:13px}.label{font-size:12px}
.base{stroke:#777;stroke-dasharray:5 4}.grid{stroke:#eee}.frontier{fill:none;stroke:#1a9850;stroke-width:2;opacity:.6}
circle.chosen{stroke:#000;stroke-width:2}.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}"""


def _plain(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return json.dumps(v, default=str) if isinstance(v, dict) else str(v)


def _kv_table(pairs) -> str:
    return "<table>" + "".join(f"<tr><th>{_esc(str(k))}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _detail_pairs(r: dict):
    """(field, HTML) for every field of a recipe, so a field added later still shows up."""
    for key, value in r.items():
        if key == "fallback":
            continue  # shown in its own section (Sensitivity and fallback)
        if key == "steps":
            yield key, f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
        elif isinstance(value, dict):
            yield from ((f"{key}.{k}", _esc(_plain(v))) for k, v in value.items())
        elif key == "notes":
            yield key, "<ul>" + "".join(f"<li>{_esc(str(n))}</li>" for n in value or []) + "</ul>" if value else "-"
        elif key.endswith("_bytes") and _finite(value) is not None:
            yield key, f"{_bytes(value)} ({int(value)} B)"
        else:
            yield key, _esc(_plain(value))


def render_html(run: dict) -> str:
    """The report as one HTML document: inline CSS and SVG, nothing fetched, opens offline."""
    w, name = run.get("workload") or {}, str(_get(run, "workload", "name") or "model")
    cols, rows = _rows(run)
    recipes = _recipes(run)
    label, _ = _quality(run)
    table = "<table><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols + ["reason"]) + "</tr>" + "".join(
        f'<tr class="{_esc(str(r.get("status") or ""))}">' + "".join(f"<td>{_esc(c)}</td>" for c in row)
        + f'<td>{_esc(str(r.get("reason") or "-"))}</td></tr>' for row, r in zip(rows, recipes)) + "</table>"
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{s}' for s, c in COLORS.items())
    details = "".join(f'<h3>{_esc(str(r.get("name") or "?"))} <small>({_esc(str(r.get("status") or "-"))})</small></h3>'
                      + _kv_table(_detail_pairs(r)) for r in recipes)
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>torchslim report: {_esc(name)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>torchslim report: {_esc(name)}</h1>",
        f'<div class="error">The run stopped early; results are partial. Error: {_esc(str(run["error"]))}</div>'
        if run.get("error") else "",
        _kv_table([("workload", _esc(name) + (f" ({_esc(str(w['spec']))})" if w.get("spec") else "")),
                   ("example inputs", _esc(str(w.get("example") or "-"))),
                   ("primary metric", _esc(str(w.get("metric") or "-"))),
                   ("machine", _esc(_machine_line(run.get("machine") or {}))),
                   ("date", _esc(str(run.get("created") or "-"))),
                   *((k, _esc(v)) for k, v in search_lines(run)),
                   ("artifact", _esc(str(run.get("artifact") or "-")))]),
        f'<p class="chosen-box">Chosen: {_esc(_chosen_line(run))}</p>',
        "<h2>Summary</h2>", table,
        _generation_html(run),
        f"<h2>Speed vs quality</h2><p>{legend}; line: Pareto frontier; dashed: baseline speed.</p>", _pareto_svg(run),
        "<h2>Size of the weights</h2>", _size_svg(run),
        _fallback_html(run),
        "<h2>Configuration</h2>", _kv_table((k, _esc(_plain(v))) for k, v in (run.get("config") or {}).items()),
        "<h2>Machine</h2>", _kv_table((k, _esc(_plain(v))) for k, v in (run.get("machine") or {}).items()),
        "<h2>Recipes in detail</h2>", details,
        f"<h2>Reproduce</h2><pre>{_esc(run['snippet'])}</pre>" if isinstance(run.get("snippet"), str) else "",
        f"<p><small>Quality axis: {_esc(label)}.</small></p></body></html>\n",
    ]
    return "\n".join(p for p in parts if p)


def _generation_html(run: dict) -> str:
    """Generation runs: prefill (TTFT) and decode apart, with perplexity and greedy agreement."""
    if _get(run, "workload", "task") != "text-generation":
        return ""
    from .generation.report import format_generation_table

    return ("<h2>Text generation: time to first token, decode, quality</h2>"
            f"<pre>{_esc(format_generation_table(run))}</pre>")


# -- sensitivity -----------------------------------------------------------------------------------

def _db(x) -> str:
    return "inf" if x is None else _fixed(x, 1)


def _sensitivity_rows(layers: list, metric: str | None, kept: set[str] = frozenset()) -> tuple[list[str], list[list[str]]]:
    cols = ["rank", "layer", "type", "SQNR dB (alone)", "min cos"] + ([f"{metric} (drop)"] if metric else [])
    cols += ["kept in float"] if kept else []
    rows = []
    for r in layers:
        if not isinstance(r, dict):
            continue
        row = [str(r.get("rank") or "-"), str(r.get("name") or "?"), str(r.get("kind") or "-"), _db(r.get("sqnr_db")),
               _fixed(r.get("min_cosine"), 5)]
        if metric:
            drop = _finite(r.get("metric_drop"))
            row.append("-" if _finite(r.get("metric")) is None else f"{_num(r['metric'])} ({'-' if drop is None else _num(drop)})")
        rows.append(row + (["yes" if r.get("name") in kept else ""] if kept else []))
    return cols, rows


def _html_table(cols: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def format_sensitivity(sens: dict) -> str:
    """`torchslim sensitivity` as a terminal table, most damaging layer first."""
    metric = sens.get("metric")
    cols, rows = _sensitivity_rows(sens.get("layers") or [], metric)
    widths = [max(len(c) for c in column) for column in zip(cols, *rows)] if rows else [len(c) for c in cols]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    alls = sens.get("all_quantized") or {}
    head = [f"sensitivity of {sens.get('workload') or 'model'} to {sens.get('label') or '?'}: {sens.get('method') or ''}",
            f"ranked by {sens.get('ranked_by') or 'output SQNR'}; {sens.get('samples') or '?'} samples",
            f"all layers quantized: SQNR {_db(alls.get('sqnr_db'))} dB, min cosine {_fixed(alls.get('min_cosine'), 5)}"
            + (f", {metric} {_num(alls.get('metric'))} (FP32 {_num(sens.get('baseline_metric'))})" if metric else "")]
    return "\n".join(head + ["", line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _sensitivity_body(sens: dict, kept: set[str] = frozenset()) -> str:
    metric = sens.get("metric")
    alls = sens.get("all_quantized") or {}
    facts = [("technique", _esc(str(sens.get("label") or "-"))), ("method", _esc(str(sens.get("method") or "-"))),
             ("ranked by", _esc(str(sens.get("ranked_by") or "-"))), ("samples", _esc(str(sens.get("samples") or "-"))),
             ("all layers quantized", _esc(f"SQNR {_db(alls.get('sqnr_db'))} dB, min cosine {_fixed(alls.get('min_cosine'), 5)}"
                                           + (f", {metric} {_num(alls.get('metric'))}" if metric and alls.get("metric") is not None else "")))]
    if metric:
        facts.append((f"FP32 {metric}", _esc(_num(sens.get("baseline_metric")))))
    return _kv_table(facts) + _html_table(*_sensitivity_rows(sens.get("layers") or [], metric, kept))


def render_sensitivity_html(sens: dict) -> str:
    """The `torchslim sensitivity` result as one self-contained HTML page."""
    name = str(sens.get("workload") or "model")
    return "\n".join([
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>torchslim sensitivity: {_esc(name)}</title>',
        f"<style>{CSS}</style></head><body>", f"<h1>Layer sensitivity: {_esc(name)}</h1>",
        "<p>Each row: the model with only that layer quantized, against FP32. Most damaging first.</p>",
        _sensitivity_body(sens), "</body></html>\n"])


def write_sensitivity_html(sens: dict, path: str) -> None:
    from . import fileio

    fileio.write_text(path, render_sensitivity_html(sens))


def _fallback_html(run: dict) -> str:
    """Section: for each quantization recipe that was retried with layers in float, why, the layer
    ranking, the predictions and the real attempts."""
    parts = []
    for r in _recipes(run):
        fb = r.get("fallback")
        if not isinstance(fb, dict):
            continue
        kept = {str(k.get("name")) for k in fb.get("kept_in_float") or [] if isinstance(k, dict)}
        facts = [("retry of", _esc(str(fb.get("from") or "-"))), ("why", _esc(str(fb.get("why") or "-"))),
                 ("result", _esc(f"{r.get('name')}: {r.get('status')}" + (f" ({r.get('reason')})" if r.get("reason") else "")
                                 if kept else str(fb.get("result") or fb.get("error") or "-")))]
        if kept:
            facts.append(("kept in float", _esc(", ".join(sorted(kept)))))
        if fb.get("seconds") is not None:
            facts.append(("time", _esc(f"{_num(fb['seconds'])} s")))
        body = _kv_table(facts)
        if fb.get("ranking"):
            body += "<h4>Layers, most sensitive first</h4>" + _html_table(*_sensitivity_rows(fb["ranking"], None, kept or {""}))
        trials = [t for t in fb.get("predictions") or [] if isinstance(t, dict)]
        if trials:
            body += "<h4>Predictions (simulated, fewest layers by bisection)</h4>" + _html_table(
                ["layers in float", "passes", "min cos", "metric drop"],
                [[", ".join(t.get("float_layers") or []) or "(none)", "yes" if t.get("passes") else "no",
                  _fixed(t.get("min_cosine"), 5), _num(t.get("metric_drop"))] for t in trials])
        attempts = [a for a in fb.get("attempts") or [] if isinstance(a, dict)]
        if attempts:
            body += "<h4>Real attempts</h4>" + _html_table(
                ["layers in float", "status", "min cos", "metric drop", "reason"],
                [[", ".join(a.get("float_layers") or []), str(a.get("status") or "-"), _fixed(a.get("min_cosine"), 5),
                  _num(a.get("metric_drop")), str(a.get("reason") or "")] for a in attempts])
        parts.append(f"<h3>{_esc(str(r.get('name') or '?'))}</h3>" + body)
    return "<h2>Sensitivity and fallback</h2>" + "".join(parts) if parts else ""


# -- recalibration ------------------------------------------------------------------------------

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
        row = [label, _fixed(d.get("sqnr_db"), 1), _fixed(d.get("min_cosine"), 4), _fixed(d.get("top1_agreement"), 4),
               _saturation(d)]
        rows.append(row + ([_fixed(d.get("metric"), 2)] if metric else []))
    widths = [max(len(c) for c in col) for col in zip(cols, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    head = [f"recalibrated {rep.get('recipe')} on {rep.get('samples')} samples of {rep.get('data')}; "
            f"compared with FP32 on the new data"]
    tail = []
    if metric and rep.get("fp32_metric") is not None:
        tail.append(f"FP32 {metric}: {_fixed(rep['fp32_metric'], 2)} ({rep.get('metric_source')})")
    return "\n".join(head + ["", line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows] + tail)


def write_html(run: dict, path: str) -> None:
    """Write the HTML report to `path` atomically (a reader never sees half a report)."""
    from . import fileio

    fileio.write_text(path, render_html(run))
