import html
import os
import re
from html.parser import HTMLParser

from markupsafe import escape

from torchslim import report
from torchslim.results import RecipeResult, RunResult

EVIL = '<script>&"'
VOID = {"meta", "br", "hr", "img", "input", "link", "rect", "line", "circle", "polyline", "path"}


def _timing(median, n=30):
    return {"n": n, "median_ms": median, "p90_ms": median * 1.1, "mean_ms": median * 1.02, "stdev_ms": median * 0.03,
            "iqr_ms": median * 0.04, "ci95_ms": [median * 0.98, median * 1.03], "first_call_ms": median * 40,
            "batch_size": 8, "throughput_per_s": 8000 / median}


def _fidelity(min_cos):
    return {"sqnr_db": 35.2, "cosine": min_cos + 0.0005, "min_cosine": min_cos, "max_abs_err": 0.02,
            "top1_agreement": 0.99, "finite": True}


def _run(**overrides) -> dict:
    step = [{"technique": "dynamic_int8"}]
    recipes = [
        RecipeResult("baseline", [], status="baseline", timing=_timing(20.0), speedup=1.0, size_bytes=86_200_000,
                     peak_memory_bytes=12_000_000, metrics={"accuracy": 91.0}, prepare_s=0.0),
        RecipeResult("dynamic_int8+compile", step, status="chosen", reason="fastest within thresholds",
                     notes=["3 layers left in float"], prepare_s=1.2, first_call_ms=900.0, timing=_timing(8.3),
                     speedup=2.41, size_bytes=22_000_000, peak_memory_bytes=6_000_000, fidelity=_fidelity(0.9981),
                     metrics={"accuracy": 90.7}, metric_drop=0.3),
        RecipeResult("bf16", step, status="ok", timing=_timing(11.0), speedup=1.82, size_bytes=43_100_000,
                     fidelity=_fidelity(0.9995), metrics={"accuracy": 90.9}, metric_drop=0.1),
        RecipeResult("int8 <weird> & co", step, status="rejected", reason=f"min cosine 0.91 < 0.99 {EVIL}",
                     timing=_timing(7.0), speedup=2.9, size_bytes=21_000_000, fidelity=_fidelity(0.91),
                     metrics={"accuracy": 80.2}, metric_drop=10.8),
        RecipeResult("torchscript", step, status="failed", reason="RuntimeError: cannot script"),
        RecipeResult("fp16", step, status="skipped", reason="no fp16 support on this CPU"),
    ]
    run = RunResult(
        workload={"name": "resnet-ish", "spec": "models/a<b>.py:build", "example": "(8, 3, 224, 224):float32",
                  "metric": "accuracy"},
        machine={"device": "cpu", "cpu": "Test CPU", "torch": "2.13.0", "torchao": "0.14.0", "threads": 8,
                 "bf16": True, "amx": ["amx_bf16"]},
        config={"objective": "latency", "min_cosine": 0.99, "max_drop": 1.0},
        recipes=recipes, chosen="dynamic_int8+compile", artifact="out/model", created="2025-01-01T12:00:00",
    ).to_dict()
    run["snippet"] = "import torchslim\nmodel = torchslim.load('out/model')  # a < b & c\n"
    run.update(overrides)
    return run


class _Checker(HTMLParser):
    """Fails on unbalanced tags, and records remote references."""

    def __init__(self):
        super().__init__()
        self.stack, self.remote = [], []

    def handle_starttag(self, tag, attrs):
        self.remote += [v for k, v in attrs if k in ("src", "href") and v and re.match(r"\w+:", v)]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.remote += [v for k, v in attrs if k in ("src", "href") and v and re.match(r"\w+:", v)]

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def _check_html(text):
    p = _Checker()
    p.feed(text)
    p.close()
    assert p.stack == [] and p.remote == []


def test_format_table():
    run = _run()
    table = report.format_table(run)
    for r in run["recipes"]:
        assert r["name"] in table and r["status"] in table
    assert "chosen:   dynamic_int8+compile: 2.41x faster" in table
    assert "resnet-ish" in table and "(8, 3, 224, 224):float32" in table and "8 threads" in table
    failed = next(line for line in table.splitlines() if line.startswith("torchscript"))
    assert failed.split()[2:8] == ["-"] * 6  # latency, speedup, size, peak, min cos, metric
    assert "8.30 [8.13-8.55]" in table and "86.2 MB" in table and "0.9981" in table and "90.7 (drop 0.300)" in table
    widths = {len(line) for line in table.splitlines()[4:]}
    assert max(widths) < 200


def test_format_table_without_choice_or_metric():
    run = _run(chosen=None)
    run["workload"]["metric"] = None
    table = report.format_table(run)
    assert report.NO_CHOICE in table and "accuracy" not in table


def test_write_html(tmp_path):
    run = _run()
    path = tmp_path / "report.html"
    report.write_html(run, str(path))
    text = path.read_text(encoding="utf-8")
    _check_html(text)
    assert "<svg" in text
    # escaped as Jinja2/markupsafe write it (&#34; for a double quote)
    assert "&lt;script&gt;&amp;&#34;" in text and EVIL not in text and "<script" not in text
    assert "a&lt;b&gt;.py" in text and "a &lt; b &amp; c" in text  # spec and snippet escaped too
    for r in run["recipes"]:
        assert str(escape(r["name"])) in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text) and "http" not in text
    timed = [r for r in run["recipes"] if r["timing"]]
    assert len(re.findall(r"<circle\b", text)) == len(timed) == 4
    assert 'class="pt chosen"' in text and "polyline" in text and "stroke-dasharray" in text
    assert "timing.median_ms" in text and "fidelity.sqnr_db" in text and "metric_drop" in text
    assert "3 layers left in float" in text and "&#34;technique&#34;: &#34;dynamic_int8&#34;" in text
    assert "Reproduce" in text


def test_pareto_geometry():
    svg = report.pareto_svg(_run())
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
    pts = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(
        r'<circle class="pt (\w+)" cx="([\d.]+)" cy="([\d.]+)"', svg)}
    assert all(0 < x < width and 0 < y < height for x, y in pts.values())
    # accuracy is plotted (the workload's metric): higher is up, faster is right
    assert pts["rejected"][1] > pts["ok"][1] > pts["baseline"][1]
    assert pts["rejected"][0] > pts["chosen"][0] > pts["ok"][0] > pts["baseline"][0]
    frontier = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(frontier) == 4  # no point dominates another here


def _texts_inside(svg, char_px=7.0):
    """Every label, at a generous estimate of its width, lies inside the SVG's width."""
    width = int(re.search(r'width="(\d+)"', svg).group(1))
    for x, anchor, body in re.findall(r'<text x="([\d.]+)" y="[\d.-]+" class="\w+" text-anchor="(\w+)">([^<]*)<', svg):
        w = len(html.unescape(body)) * char_px
        lo, hi = {"start": (0, w), "end": (-w, 0), "middle": (-w / 2, w / 2)}[anchor]
        assert 0 <= float(x) + lo and float(x) + hi <= width, (x, anchor, body)


def test_chart_labels_fit():
    run = _run()
    _texts_inside(report.pareto_svg(run))
    _texts_inside(report.size_svg(run))


def test_cosine_axis_without_metric():
    run = _run()
    run["workload"]["metric"] = None
    svg = report.pareto_svg(run)
    assert "min cosine" in svg
    ys = {m[0]: float(m[1]) for m in re.findall(r'<circle class="pt (\w+)" cx="[\d.]+" cy="([\d.]+)"', svg)}
    assert ys["baseline"] < ys["ok"] < ys["chosen"] < ys["rejected"]  # SVG y grows downwards


def test_frontier_drops_dominated_points():
    points = [(1.0, 1.0, "a", "baseline"), (2.0, 0.99, "b", "ok"), (1.5, 0.98, "c", "ok"), (3.0, 0.9, "d", "ok")]
    assert [p[2] for p in report.charts.frontier(points)] == ["a", "b", "d"]


def test_html_with_error_and_only_baseline(tmp_path):
    run = _run(error="KeyboardInterrupt <ctrl-c>", chosen=None)
    run["recipes"] = run["recipes"][:1]
    run.pop("snippet")
    path = tmp_path / "sub" / "report.html"
    report.write_html(run, str(path))
    text = path.read_text(encoding="utf-8")
    _check_html(text)
    assert 'class="error"' in text and "KeyboardInterrupt &lt;ctrl-c&gt;" in text
    assert report.NO_CHOICE in text and text.count("<circle") == 1
    assert os.listdir(path.parent) == ["report.html"]  # the temporary file was renamed, none left behind
    assert "KeyboardInterrupt" in report.format_table(run)


def test_nulls_everywhere(tmp_path):
    run = {"recipes": [{"name": "x", "status": "failed", "timing": None, "fidelity": None, "speedup": float("nan")}],
           "workload": None, "machine": None, "config": None}
    assert "x" in report.format_table(run)
    report.write_html(run, str(tmp_path / "r.html"))
    _check_html((tmp_path / "r.html").read_text(encoding="utf-8"))
    report.write_html({}, str(tmp_path / "empty.html"))


def test_real_run_renders_typed(tmp_path):
    """A real (tiny) optimize run, rendered from the RunResult and from its results.json."""
    import json

    import torch
    import torch.nn as nn

    from torchslim.inputs import Example
    from torchslim.optimize import OptimizeConfig, optimize
    from torchslim.workload import Workload

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    wl = Workload(model=model, example=Example((torch.randn(4, 16),)), name="tiny <mlp>")
    run = optimize(wl, OptimizeConfig(recipes=("inference-mode", "dynamic-int8", "torchscript-freeze"), rounds=2,
                                      target_round_ms=2.0, out=str(tmp_path), save_model=False, cache=False), progress=False)
    run.recipes[1].reason = f"checked {EVIL}"
    if run.chosen is None:  # timing decides; mark one to check the row
        run.recipes[2].status, run.chosen = "chosen", run.recipes[2].name
    run.recipes.append(RecipeResult("fp16 & friends", [], status="skipped", reason="no FP16 <here>"))
    for text in (report.render_html(run), report.render_html(json.loads(json.dumps(run.to_dict())))):
        _check_html(text)
        assert "checked &lt;script&gt;&amp;&#34;" in text and EVIL not in text and "<script" not in text
        assert "tiny &lt;mlp&gt;" in text and "no FP16 &lt;here&gt;" in text
        for r in run.recipes:
            assert str(escape(r.name)) in text
        chosen_rows = re.findall(r'<tr class="chosen">\s*<td>([^<]*)</td>', text)
        assert chosen_rows == [run.chosen]
        skipped = text[text.index("<details>"):text.index("</details>")]
        assert "fp16 &amp; friends" in skipped and "1 recipe(s) skipped" in skipped
    saved = (tmp_path / "report.html").read_text(encoding="utf-8")  # what optimize itself wrote
    _check_html(saved)
    assert "tiny &lt;mlp&gt;" in saved


def test_old_results_json_renders(tmp_path):
    from test_results import OLD_RUN

    text = report.render_html(OLD_RUN)
    _check_html(text)
    assert all(str(escape(r["name"])) in text for r in OLD_RUN["recipes"])
    assert "0.500 [0.490-0.510]" in report.format_table(OLD_RUN)


def test_templates_are_package_data():
    """An installed (non-editable) torchslim finds its templates: every file under report/templates
    is matched by pyproject's package-data."""
    import fnmatch
    import pathlib

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = pathlib.Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["torchslim"]
    files = [p.relative_to(root / "torchslim").as_posix() for p in (root / "torchslim/report/templates").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


def test_shared_fixed_table():
    table = report.fixed_table(["a", "long column"], [["xyz", 1], ["q", None]], ["head"], ["tail"])
    assert table.splitlines() == ["head", "", "a    long column", "---  -----------", "xyz  1", "q    None", "tail"]


def test_crowded_pareto_labels_do_not_overlap():
    """A dozen recipes at nearly the same speed and quality: every name or number stays readable."""
    step = [{"technique": "compile"}]
    recipes = [RecipeResult("baseline", [], status="baseline", timing=_timing(20.0), speedup=1.0, fidelity=_fidelity(1.0))]
    recipes += [RecipeResult(f"recipe-number-{i}", step, status="ok" if i else "chosen", timing=_timing(10.0),
                             speedup=2.0 + 0.01 * i, fidelity=_fidelity(0.999 - 0.00001 * i)) for i in range(14)]
    run = RunResult(workload={"name": "crowd"}, machine={}, config={}, recipes=recipes, chosen="recipe-number-0")
    svg = report.pareto_svg(run)
    _texts_inside(svg)
    boxes = []
    for x, y, anchor, body in re.findall(r'<text x="([\d.]+)" y="([\d.]+)" class="(?:label|key)" text-anchor="(\w+)">([^<]*)<', svg):
        w = len(html.unescape(body)) * 6.5
        x0 = float(x) - w if anchor == "end" else float(x)
        boxes.append((x0, x0 + w, float(y) - 11, float(y) + 2))
    assert len(boxes) >= 15
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]]
    assert "recipe-number-0" in svg and all(f"recipe-number-{i}" in svg for i in range(14))  # named or in the key
