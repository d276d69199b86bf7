"""Markdown for the peers section of BENCHMARKS.md: one table per case, the "where peers win"
list derived from the numbers, and the replacement of the text between the section's markers.
Pure functions over the result dicts that suite.run_case returns."""
from __future__ import annotations

BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
MIN_COSINE = 0.99  # torchslim's default acceptance: a faster method below it is not a win
SELF = ("fp32-eager", "torchslim")
# Bits of the arithmetic in the heavy layers (weight-only INT8 computes in floating point).
BITS = {"fp32": 32, "int8-weight-only": 32, "int4-weight-only": 16, "bf16": 16, "fp16": 16,
        "int8-dynamic": 8, "int8-static": 8}


def _f(x, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ok(row: dict) -> bool:
    return row.get("status") == "ok" and bool(row.get("timing"))


def _keeps_outputs(row: dict) -> bool:
    fid = row.get("fidelity") or {}
    return bool(fid.get("finite")) and (fid.get("min_cosine") or 0) >= MIN_COSINE


def ordered(rows: list[dict]) -> list[dict]:
    """FP32 eager, torchslim, then the peers in the order they were prepared."""
    return sorted(rows, key=lambda r: SELF.index(r["method"]) if r["method"] in SELF else len(SELF))


def case_table(result: dict) -> str:
    lines = ["| method | engine | runs in | median ms [95% CI] | vs FP32 | vs torchslim | min cosine | top-1 agree "
             "| size MB | prep s | first call s | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered(result["rows"]):
        t, fid = r.get("timing"), r.get("fidelity") or {}
        if r["status"] != "ok" or not t:
            lines.append(f"| {r['method']} | {r['engine']} | {r['precision']} | **failed**: {_cell(r.get('error', ''))} "
                         "| - | - | - | - | - | - | - | |")
            continue
        ms = f"{t['median_ms']:.2f} [{t['ci95_ms'][0]:.2f}-{t['ci95_ms'][1]:.2f}]"
        prep = r.get("prep_s", 0) + r.get("shared_prep_s", 0)
        top1 = fid.get("top1_agreement")
        cos = _f(fid.get("min_cosine"), ".5f") + ("" if _keeps_outputs(r) else " (broken)")
        lines.append(
            f"| {r['method']} | {r['engine']} | {r['precision']} | {ms} | {_x(r.get('vs_fp32'))} "
            f"| {_x(r.get('vs_torchslim'))} | {cos} | {'-' if top1 is None else f'{100 * top1:.1f}%'} "
            f"| {_f(r.get('size_bytes') and r['size_bytes'] / 1e6, '.2f')} | {prep:.1f} "
            f"| {_f(r.get('first_call_ms') and r['first_call_ms'] / 1e3, '.2f')} | {_cell('; '.join(r.get('notes', [])))} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _hint(peer: str, mine: str) -> str:
    """What the numbers alone say about a win: a precision gap, or kernels and fusion."""
    a, b = BITS.get(peer), BITS.get(mine)
    if a is None or b is None:
        return f"runs in {peer} vs torchslim's {mine}"
    if a < b:
        return f"precision: {peer} vs torchslim's {mine}"
    if a > b:
        return f"kernels/fusion: wins at higher precision ({peer} vs torchslim's {mine})"
    if {peer, mine} == {"int8-static", "int8-dynamic"}:
        return f"kernels/fusion, and static vs dynamic activation scales ({peer} vs torchslim's {mine})"
    return f"kernels/fusion: both {peer}"


def _overlap(a: dict, b: dict) -> bool:
    return a["ci95_ms"][0] <= b["ci95_ms"][1] and b["ci95_ms"][0] <= a["ci95_ms"][1]


def wins(results: list[dict], why: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(peers faster than torchslim with outputs kept, peers faster that broke the outputs), as
    markdown list items: by how much, what the numbers say about why, and the hand-written why."""
    why = why or {}
    won, broke = [], []
    for res in results:
        by = {r["method"]: r for r in res["rows"]}
        slim = by.get("torchslim")
        if not slim or not _ok(slim):
            fastest = max((r for r in res["rows"] if _ok(r) and r["method"] not in SELF and _keeps_outputs(r)),
                          key=lambda r: r.get("vs_fp32") or 0, default=None)
            err = (slim or {}).get("error", "no row")
            won.append(f"- {res['title']}: torchslim has no timing ({err})"
                       + (f"; fastest peer `{fastest['method']}` at {fastest['vs_fp32']:.2f}x FP32" if fastest else ""))
            continue
        if not _keeps_outputs(slim):
            won.append(f"- {res['title']}: torchslim's own row breaks the outputs on the held-out batches (min cosine "
                       f"{_f((slim.get('fidelity') or {}).get('min_cosine'), '.4f')}): compare with care")
        for r in ordered(res["rows"]):
            if r["method"] in SELF or not _ok(r) or (r.get("vs_torchslim") or 0) <= 1.0:
                continue
            key = f"{res['case']}/{r['method']}"
            noise = " (CIs overlap: within noise)" if _overlap(r["timing"], slim["timing"]) else ""
            line = (f"- `{key}` ({r['engine']}, {r['precision']}): **{r['vs_torchslim']:.2f}x** faster than torchslim's "
                    f"`{(res.get('recipe') or {}).get('chosen')}` ({r['timing']['median_ms']:.2f} vs "
                    f"{slim['timing']['median_ms']:.2f} ms){noise}")
            if not _keeps_outputs(r):
                broke.append(f"{line}, but min cosine {_f((r.get('fidelity') or {}).get('min_cosine'), '.4f')} < {MIN_COSINE}")
                continue
            won.append(f"{line}; {_hint(r['precision'], slim['precision'])}." + (f" Why: {why[key]}" if key in why else ""))
    return won, broke


def render(results: list[dict], meta: dict, why: dict[str, str] | None = None) -> str:
    won, broke = wins(results, why)
    v = meta["versions"]
    head = [
        BEGIN,
        "## Against the peers (issue: peer benchmark suite)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['mode']}; {meta['rounds']} interleaved rounds"
        f", ~{meta['target_round_ms']:.0f} ms per method per round; total {meta['total_s'] / 60:.1f} min).",
        f"Machine: {meta['cpu']}, {meta['cpu_count']} cores; AMX: {meta['amx'] or 'none'}. "
        + ", ".join(f"{k} {v[k]}" for k in v) + ".",
        f"Threads: {meta['threads']} for every engine (torch.set_num_threads({meta['threads']}); ONNX Runtime "
        f"intra_op_num_threads={meta['threads']}, inter_op_num_threads=1, sequential; OpenVINO "
        f"INFERENCE_NUM_THREADS={meta['threads']}, NUM_STREAMS=1, LATENCY hint).",
        "",
        "Every case runs in its own process: each method is prepared from the same FP32 model, checked on held-out "
        "batches against FP32 eager (min cosine = worst per-sample cosine; top-1 agreement for classifiers), then all "
        "are timed in that one process, round-robin after warm-up (`torchslim.measure.interleaved`'s schedule, with a "
        f"{meta.get('settle_ms', 100):.0f} ms pause and an untimed call before each method's turn, so no engine's "
        "idle threads still spin while another is timed); vs X = ratio of medians. torchslim's row is the recipe its `optimize` chose in a separate process (the search line under "
        "each case); prep s = preparation from the FP32 model (ONNX export / OpenVINO conversion included), "
        "first call s = the first call after it (compilation). Size = serialized weights (torch state dict, .onnx, "
        "OpenVINO IR). A failure is a row with its error.",
        "",
        "### Where peers win",
        "",
        *(won or ["- nowhere in this run"]),
        "",
    ]
    if broke:
        head += ["Faster than torchslim but breaking the outputs (not counted as wins):", "", *broke, ""]
    body = []
    for res in results:
        body += [f"### {res['title']}", "", _search_line(res), "", case_table(res), ""]
    for title, err in meta.get("failed_cases", []):
        body += [f"### {title}", "", f"**case failed**: {_cell(err)}", ""]
    return "\n".join(head + body + [END])


def _search_line(res: dict) -> str:
    rec = res.get("recipe") or {}
    if "tried" not in rec:
        return f"torchslim search: {rec.get('error') or 'no result'}"
    judged = f"task metric `{rec['task_metric']}` + cosine" if rec.get("task_metric") else "output cosine only"
    rows = rec.get("tried") or []
    tried = [t for t in rows if t["status"] != "skipped"]
    kept = sum(1 for t in tried if t["status"] in ("ok", "chosen"))
    skipped = f", {len(rows) - len(tried)} skipped" if len(rows) > len(tried) else ""
    mode = f"{rec['mode']}: " if rec.get("mode") else ""
    return (f"torchslim chose **{rec.get('chosen') or 'nothing'}** ({mode}{len(tried)} recipes tried, {kept} kept{skipped}, "
            f"{rec.get('search_s', 0):.0f} s, judged by {judged})" + (f"; error: {rec['error']}" if rec.get("error") else ""))


def replace_section(text: str, section: str) -> str:
    """`text` with the part from BEGIN to END replaced by `section` (which carries the markers);
    appended at the end when the markers are missing or out of order."""
    i, j = text.find(BEGIN), text.find(END)
    if i != -1 and j > i:
        return text[:i] + section + text[j + len(END):]
    return text + ("" if not text or text.endswith("\n") else "\n") + ("\n" if text else "") + section + "\n"


def write_section(path: str, section: str) -> None:
    import os

    from torchslim.fileio import write_text

    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    write_text(path, replace_section(old, section))
