"""The run and the sensitivity ranking as one self-contained HTML file each, from Jinja2 templates."""
from __future__ import annotations

import functools
import json

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from ..results import RecipeResult, RunResult, Status
from ..search.workload_type import WorkloadType
from . import charts
from .text import db, recipe_rows, search_lines, sensitivity_rows
from .values import COLORS, as_run, chosen_line, finite, fixed, machine_line, nbytes, num, quality


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """Templates from torchslim/report/templates (package data), HTML-escaped by default."""
    return Environment(loader=PackageLoader("torchslim.report", "templates"), undefined=StrictUndefined,
                       autoescape=select_autoescape(["html", "j2"]), keep_trailing_newline=True)


def plain(v) -> str:
    """A value as one line of text: '-' for null, 6 significant digits, JSON for dicts."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(plain(x) for x in v) + "]"
    return json.dumps(v, default=str) if isinstance(v, dict) else str(v)


def _detail_pairs(r: RecipeResult) -> list[tuple[str, str, object]]:
    """(field, kind, value) for every field of a recipe's JSON row, so a field added later still shows up."""
    out = []
    for key, value in r.to_dict().items():
        if key == "fallback":
            continue  # shown in its own section (Sensitivity and fallback)
        if key == "steps":
            out.append((key, "pre", json.dumps(value, indent=2, default=str)))
        elif isinstance(value, dict):
            out += [(f"{key}.{k}", "text", plain(v)) for k, v in value.items()]
        elif key == "notes":
            out.append((key, "list", [str(n) for n in value]) if value else (key, "text", "-"))
        elif key.endswith("_bytes") and finite(value) is not None:
            out.append((key, "text", f"{nbytes(value)} ({int(value)} B)"))
        else:
            out.append((key, "text", plain(value)))
    return out


def _fallbacks(run: RunResult) -> list[dict]:
    """For each quantization recipe retried with layers in float: why, the layer ranking, the
    predictions and the real attempts (tables as (columns, rows))."""
    out = []
    for r in run.recipes:
        fb = r.fallback
        if not isinstance(fb, dict):
            continue
        kept = {str(k.get("name")) for k in fb.get("kept_in_float") or [] if isinstance(k, dict)}
        facts = [("retry of", str(fb.get("from") or "-")), ("why", str(fb.get("why") or "-")),
                 ("result", f"{r.name}: {r.status}" + (f" ({r.reason})" if r.reason else "")
                  if kept else str(fb.get("result") or fb.get("error") or "-"))]
        if kept:
            facts.append(("kept in float", ", ".join(sorted(kept))))
        if fb.get("seconds") is not None:
            facts.append(("time", f"{num(fb['seconds'])} s"))
        tables = []
        if fb.get("ranking"):
            tables.append(("Layers, most sensitive first", sensitivity_rows(fb["ranking"], None, kept or {""})))
        trials = [t for t in fb.get("predictions") or [] if isinstance(t, dict)]
        if trials:
            tables.append(("Predictions (simulated, fewest layers by bisection)", (
                ["layers in float", "passes", "min cos", "metric drop"],
                [[", ".join(t.get("float_layers") or []) or "(none)", "yes" if t.get("passes") else "no",
                  fixed(t.get("min_cosine"), 5), num(t.get("metric_drop"))] for t in trials])))
        attempts = [a for a in fb.get("attempts") or [] if isinstance(a, dict)]
        if attempts:
            tables.append(("Real attempts", (
                ["layers in float", "status", "min cos", "metric drop", "reason"],
                [[", ".join(a.get("float_layers") or []), str(a.get("status") or "-"), fixed(a.get("min_cosine"), 5),
                  num(a.get("metric_drop")), str(a.get("reason") or "")] for a in attempts])))
        out.append({"name": r.name, "facts": facts, "tables": tables})
    return out


def _workload_table(run: RunResult) -> tuple[str, str] | None:
    """The workload type's own table (text generation: prefill and decode apart) and its title, or None."""
    kind = WorkloadType.find(run.workload.get("task"))
    table = kind.table(run.to_dict()) if kind is not None else None
    return (kind.table_title, table) if table else None


def render_html(run: RunResult | dict) -> str:
    """The report as one HTML document: inline CSS and SVG, nothing fetched, opens offline.
    `run` is a RunResult or a results.json dict (also one an earlier version wrote)."""
    run = as_run(run)
    w = run.workload
    cols, cells = recipe_rows(run)
    rows = [{"status": str(r.status), "cells": row, "reason": r.reason or "-"} for row, r in zip(cells, run.recipes)]
    skipped = [r.status == Status.SKIPPED for r in run.recipes]
    snippet = run.extra.get("snippet")
    return environment().get_template("report.html.j2").render(
        name=str(w.get("name") or "model"), error=run.error, chosen=chosen_line(run),
        facts=[("workload", str(w.get("name") or "model") + (f" ({w['spec']})" if w.get("spec") else "")),
               ("example inputs", str(w.get("example") or "-")), ("primary metric", str(w.get("metric") or "-")),
               ("machine", machine_line(run.machine)), ("date", run.created or "-"), *search_lines(run),
               ("artifact", run.artifact or "-")],
        cols=cols + ["reason"], rows=[row for row, s in zip(rows, skipped) if not s],
        skipped=[row for row, s in zip(rows, skipped) if s],
        workload_table=_workload_table(run), colors=COLORS, quality_label=quality(run)[0],
        pareto=Markup(charts.pareto_svg(run)), sizes=Markup(charts.size_svg(run)),  # built from escaped text
        fallbacks=_fallbacks(run),
        config=[(k, plain(v)) for k, v in run.config.items()], machine=[(k, plain(v)) for k, v in run.machine.items()],
        details=[{"name": r.name, "status": str(r.status), "pairs": _detail_pairs(r)} for r in run.recipes],
        snippet=snippet if isinstance(snippet, str) else None)


def write_html(run: RunResult | dict, path: str) -> None:
    """Write the HTML report to `path` atomically (a reader never sees half a report)."""
    from .. import fileio

    fileio.write_text(path, render_html(run))


def render_sensitivity_html(sens: dict) -> str:
    """The `torchslim sensitivity` result as one self-contained HTML page."""
    metric = sens.get("metric")
    alls = sens.get("all_quantized") or {}
    facts = [("technique", str(sens.get("label") or "-")), ("method", str(sens.get("method") or "-")),
             ("ranked by", str(sens.get("ranked_by") or "-")), ("samples", str(sens.get("samples") or "-")),
             ("all layers quantized", f"SQNR {db(alls.get('sqnr_db'))} dB, min cosine {fixed(alls.get('min_cosine'), 5)}"
              + (f", {metric} {num(alls.get('metric'))}" if metric and alls.get("metric") is not None else ""))]
    if metric:
        facts.append((f"FP32 {metric}", num(sens.get("baseline_metric"))))
    cols, rows = sensitivity_rows(sens.get("layers") or [], metric)
    return environment().get_template("sensitivity.html.j2").render(
        name=str(sens.get("workload") or "model"), facts=facts, cols=cols, rows=rows)


def write_sensitivity_html(sens: dict, path: str) -> None:
    from .. import fileio

    fileio.write_text(path, render_sensitivity_html(sens))
