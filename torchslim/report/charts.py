"""Inline SVG charts (speed vs quality, weight sizes) as pure functions of a run; every text escaped here."""
from __future__ import annotations

import math

from markupsafe import escape

from ..results import RecipeResult, RunResult, Status
from .values import COLORS, as_run, finite, nbytes, num, quality, ratio, size_ratio, speedup, truncate

CHAR_PX, LINE_PX = 6.6, 14  # a 12px label: about this wide per character, and this tall


def frontier(points: list[tuple]) -> list[tuple]:
    """Points (x, y, ...) that no other point beats in both speed and quality, left to right."""
    def beaten(p):
        return any(q[0] >= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points)
    return sorted((p for p in points if not beaten(p)), key=lambda p: p[0])


def x_ticks(lo: float, hi: float) -> list[float]:
    nice = [0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100]
    ticks = [t for t in nice if lo <= t <= hi]
    return ticks[:: max(1, math.ceil(len(ticks) / 7))]


def y_ticks(lo: float, hi: float) -> tuple[list[float], int]:
    """About five round values (multiples of 1, 2 or 5 x 10^k) in [lo, hi], and the decimals they need."""
    step = 10 ** math.floor(math.log10((hi - lo) / 5))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 5)
    first = math.ceil(lo / step)
    ticks = [k * step for k in range(first, first + 7) if k * step <= hi]
    return ticks, max(0, -math.floor(math.log10(step)))


def text(x: float, y: float, body: str, cls: str = "label", anchor: str = "start", extra: str = "") -> str:
    """An SVG <text>; `body` is escaped here."""
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}"{extra}>{escape(body)}</text>'


class _Labels:
    """Place labels without overlap: each goes at its preferred baseline or the nearest free one
    above or below it (steps of one line), within [top, bottom]."""

    def __init__(self, top: float, bottom: float):
        self.top, self.bottom, self.boxes = top, bottom, []

    def place(self, x: float, y: float, body: str, anchor: str) -> float:
        w = len(body) * CHAR_PX
        x0 = x - w if anchor == "end" else x
        for k in range(0, 40):
            cand = y + LINE_PX * ((k + 1) // 2) * (1 if k % 2 else -1)
            if not self.top + LINE_PX - 3 <= cand <= self.bottom:
                continue
            box = (x0, x0 + w, cand - LINE_PX + 3, cand + 3)
            if not any(b[0] < box[1] and box[0] < b[1] and b[2] < box[3] and box[2] < b[3] for b in self.boxes):
                self.boxes.append(box)
                return cand
        return y


def _points(run: RunResult) -> tuple[str, list[tuple[float, float, RecipeResult]]]:
    label, value = quality(run)
    points = []
    for r in run.recipes:
        x, y = speedup(r), value(r)
        if x is not None and x > 0 and y is not None:
            points.append((x, y, r))
    return label, points


def pareto_svg(run: RunResult | dict) -> str:
    """Speedup (log x) against quality, with the Pareto frontier. The baseline, the chosen recipe and
    the frontier are named beside their points; every other point gets a number, named in a key below."""
    run = as_run(run)
    label, points = _points(run)
    if not points:
        return "<p>No recipe has both a timing and a quality value to plot.</p>"
    front = frontier([p for p in points if p[2].status != Status.FAILED])  # a failed recipe is no trade-off
    named = {id(p[2]) for p in front} | {id(p[2]) for p in points if p[2].status in (Status.CHOSEN, Status.BASELINE)}
    keyed = sorted((p for p in points if id(p[2]) not in named), key=lambda p: -p[0])  # 1: the fastest
    W, L, R, T, B, col_w = 760, 80, 30, 20, 55, 245
    per_row = (W - 20) // col_w
    H = 420 + (math.ceil(len(keyed) / per_row) * 16 + 10 if keyed else 0)
    plot_bottom = 420 - B
    xs = [p[0] for p in points] + [1.0]
    xlo, xhi = min(xs) / 1.15, max(xs) * 1.15
    ylo, yhi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (yhi - ylo) * 0.12 or abs(yhi) * 0.01 or 0.01
    ylo, yhi = ylo - pad, yhi + pad
    sx = lambda v: L + (math.log(v) - math.log(xlo)) / (math.log(xhi) - math.log(xlo)) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (yhi - v) / (yhi - ylo) * (plot_bottom - T)  # noqa: E731
    yt, decimals = y_ticks(ylo, yhi)
    out = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
           f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{plot_bottom - T}" class="plot"/>']
    for t in x_ticks(xlo, xhi):
        out.append(text(sx(t), plot_bottom + 18, f"{num(t)}x", "tick", "middle"))
    for v in yt:
        out.append(f'<line x1="{L}" y1="{sy(v):.1f}" x2="{W - R}" y2="{sy(v):.1f}" class="grid"/>')
        out.append(text(L - 6, sy(v) + 4, f"{v:.{decimals}f}", "tick", "end"))
    out.append(f'<line x1="{sx(1.0):.1f}" y1="{T}" x2="{sx(1.0):.1f}" y2="{plot_bottom}" class="base"/>')
    out.append(text(sx(1.0) + 4, plot_bottom - 6, "baseline speed", "tick"))
    coords = " ".join(f"{sx(p[0]):.1f},{sy(p[1]):.1f}" for p in front)
    out.append(f'<polyline points="{coords}" class="frontier"><title>Pareto frontier</title></polyline>')
    for x, y, r in points:
        status = str(r.status)
        out.append(f'<circle class="pt {escape(status)}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{8 if status == "chosen" else 6}"'
                   f' fill="{COLORS.get(status, "#888888")}"><title>{escape(r.name)}: {num(x)}x, {escape(label)}'
                   f' {y:.{decimals + 1}f} ({escape(status)})</title></circle>')
    labels = _Labels(T, plot_bottom - 2)
    order = {Status.CHOSEN: 0, Status.BASELINE: 1}
    numbers = {id(p[2]): i + 1 for i, p in enumerate(keyed)}
    for x, y, r in sorted(points, key=lambda p: (order.get(p[2].status, 2), id(p[2]) not in named)):
        cx, cy = sx(x), sy(y)
        dx, anchor = (-10, "end") if cx > W / 2 else (10, "start")  # on the inner side, so labels stay inside
        body = truncate(r.name, 32) if id(r) in named else str(numbers[id(r)])
        ly = labels.place(cx + dx, cy - 8 if id(r) in named else cy + 4, body, anchor)
        if abs(ly - (cy - 8 if id(r) in named else cy + 4)) > LINE_PX:
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{cx + dx:.1f}" y2="{ly - 4:.1f}" class="leader"/>')
        out.append(text(cx + dx, ly, body, "label" if id(r) in named else "key", anchor))
    out.append(text((L + W - R) / 2, 420 - 12, "speedup vs baseline (log scale)", "axis", "middle"))
    out.append(text(0, 0, label, "axis", "middle", f' transform="translate(16 {(T + plot_bottom) / 2}) rotate(-90)"'))
    for i, (_, _, r) in enumerate(keyed):
        kx, ky = 10 + (i % per_row) * col_w, 420 + 10 + (i // per_row) * 16
        out.append(text(kx, ky, f"{i + 1} {truncate(r.name, 32)}", "key"))
    return "\n".join(out + ["</svg>"])


def size_svg(run: RunResult | dict) -> str:
    """One bar per recipe with a measured size, as a share of the largest."""
    run = as_run(run)
    bars = [(r, finite(r.size_bytes)) for r in run.recipes if finite(r.size_bytes) is not None]
    if not bars:
        return "<p>No recipe has a measured size.</p>"
    W, L, area, bar, gap = 760, 230, 320, 20, 8
    biggest = max(size for _, size in bars) or 1.0
    H = len(bars) * (bar + gap) + gap
    out = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">']
    for i, (r, size) in enumerate(bars):
        y, w, status = gap + i * (bar + gap), size / biggest * area, str(r.status)
        out.append(text(L - 8, y + 15, truncate(r.name, 30), anchor="end"))
        out.append(f'<rect x="{L}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS.get(status, "#888888")}">'
                   f'<title>{escape(r.name)}: {int(size)} bytes</title></rect>')
        out.append(text(L + w + 6, y + 15, f"{nbytes(size)} ({ratio(size_ratio(run, r))} of baseline)"))
    return "\n".join(out + ["</svg>"])
