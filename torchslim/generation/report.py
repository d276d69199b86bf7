"""The terminal table of a generation run: prefill and decode apart, quality beside them."""
from __future__ import annotations

from ..report.text import fixed_table


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_generation_table(run) -> str:
    """The table of a generation run (a RunResult, or its results.json dict)."""
    run = run if isinstance(run, dict) else run.to_dict()
    wl, m = run.get("workload") or {}, run.get("machine") or {}
    head = [f"text generation: {wl.get('spec')}  (prompt {wl.get('prompt_len')} tokens, {wl.get('new_tokens')} new, "
            f"batch {wl.get('batch_size')}, greedy)",
            f"machine: {m.get('cpu') or m.get('gpu') or m.get('device')}, {m.get('torch_threads')} threads, "
            f"bf16 {'yes' if m.get('bf16') else 'no'}, amx {','.join(m.get('amx') or []) or 'no'}",
            f"perplexity on {wl.get('perplexity_text')}; chosen: {run.get('chosen') or 'none'}"]
    cost = (run.get("search") or {}).get("cost") or {}
    if cost.get("changed"):
        was = ", ".join(f"{n} {cost['asked'][n]}->{cost['sized'][n]}" for n in cost["changed"])
        head.append(f"sized to the time budget from one decode step ({1000 * cost['predicted_s']['decode_step_s']:.0f} ms): "
                    f"{was} (results.json search.cost)")
    if run.get("error"):
        head.append(f"stopped early: {run['error']}")
    cols = ["recipe", "status", "targets", "speeds up", "TTFT ms", "x", "decode ms/tok", "tok/s", "x",
            f"tok/s b{wl.get('large_batch')}", "x", "ppl", "d%", "agree", "1st call s", "reason"]
    rows = []
    for r in run.get("recipes") or []:
        lb = r.get("large_batch") or {}
        rows.append([r.get("name", "?"), r.get("status", "?"), r.get("targets") or "-", r.get("speeds_up") or "-",
                     _f(r.get("ttft_ms"), ".1f"), _f(r.get("ttft_speedup"), ".2f"), _f(r.get("decode_ms_per_token"), ".2f"),
                     _f(r.get("decode_tokens_per_s"), ".1f"), _f(r.get("decode_speedup"), ".2f"),
                     _f(lb.get("decode_tokens_per_s"), ".1f"), _f(lb.get("decode_speedup"), ".2f"),
                     _f(r.get("perplexity"), ".2f"), _f(r.get("ppl_increase_pct"), "+.1f"),
                     _f(r.get("greedy_agreement"), ".0%"), _f((r.get("first_call_ms") or 0) / 1000 if r.get("first_call_ms") else None, ".1f"),
                     (r.get("reason") or "-")[:70]])
    return fixed_table(cols, rows, head)
