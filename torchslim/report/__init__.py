"""Render a run as a terminal table or as one self-contained HTML file (also from a results.json on disk)."""
from __future__ import annotations

from .charts import pareto_svg, size_svg
from .html import render_html, render_sensitivity_html, write_html, write_sensitivity_html
from .text import fixed_table, format_recalibration, format_sensitivity, format_table, search_lines
from .values import COLORS, NO_CHOICE

__all__ = ["COLORS", "NO_CHOICE", "fixed_table", "format_recalibration", "format_sensitivity", "format_table",
           "pareto_svg", "render_html", "render_sensitivity_html", "search_lines", "size_svg", "write_html",
           "write_sensitivity_html"]
