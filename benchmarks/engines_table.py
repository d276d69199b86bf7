"""Markdown for BENCHMARKS.md's engine-recipes section from `benchmarks/peers/run.py --json` files.

    PYTHONPATH=. python benchmarks/engines_table.py benchmarks/results/engines/peers_*.json

Per case: what `optimize` chose and how every recipe it tried did (speedups from its own interleaved
timing), AOTInductor against torch.compile, then torchslim's chosen model against the best peer that
keeps min cosine >= 0.99 (timed together in the peer suite's process)."""
from __future__ import annotations

import json
import sys

ENGINE_PREFIXES = ("aoti", "ort", "openvino", "static-int8+aoti")


def _engine(name: str) -> bool:
    return name.startswith(ENGINE_PREFIXES) or name.endswith("+aoti")


def render(path: str) -> str:
    saved = json.load(open(path))
    out = []
    for res in saved["results"]:
        recipe = res.get("recipe") or {}
        out.append(f"#### {res['title']}\n")
        chosen = recipe.get("chosen")
        out.append(f"`optimize` chose **{chosen}**" + (" (an engine recipe)" if chosen and _engine(chosen) else "")
                   + f"; search {recipe.get('search_s', 0):.0f} s, judged by output cosine.\n")
        tried = recipe.get("tried") or []
        if tried:
            out.append("| recipe tried | status | speedup vs FP32 eager (optimize's interleaved timing) |")
            out.append("|---|---|---|")
            for t in tried:
                sp = f"{t['speedup']:.2f}x" if t.get("speedup") else "-"
                reason = (t.get("reason") or "")[:90].replace("|", "/")
                out.append(f"| {t['name']}{' (engine)' if _engine(t['name']) else ''} | {t['status']}{': ' + reason if reason and t['status'] not in ('ok', 'chosen') else ''} | {sp} |")
            by = {t["name"]: t for t in tried}
            for a, b in (("aoti", "compile"), ("aoti+bf16", "bf16-cast+compile")):
                if by.get(a, {}).get("speedup") and by.get(b, {}).get("speedup"):
                    out.append(f"\n{a} vs {b}: **{by[a]['speedup'] / by[b]['speedup']:.2f}x** "
                               f"({by[a]['speedup']:.2f}x vs {by[b]['speedup']:.2f}x over FP32 eager).")
        rows = [r for r in res["rows"] if r.get("timing")]
        slim = next((r for r in rows if r["method"] == "torchslim"), None)
        peers = [r for r in rows if r["method"] not in ("torchslim", "fp32-eager") and (r.get("fidelity") or {}).get("min_cosine", 0) >= 0.99]
        if slim and peers:
            best = min(peers, key=lambda r: r["timing"]["median_ms"])
            ratio = best["timing"]["median_ms"] / slim["timing"]["median_ms"]
            held = (slim.get("fidelity") or {}).get("min_cosine", 0)
            out.append(f"\nIn the peer suite's process (held-out batches): torchslim ({chosen}) min cosine {held:.5f}"
                       + (" **(< 0.99: broken on held-out data although it passed on the search's example)**" if held < 0.99 else "")
                       + f", {slim['timing']['median_ms']:.3f} ms, "
                       f"{slim.get('vs_fp32', 0):.2f}x over FP32 eager; best peer with min cosine >= 0.99: {best['method']} "
                       f"{best['timing']['median_ms']:.3f} ms ({best.get('vs_fp32', 0):.2f}x); torchslim / best peer = **{ratio:.2f}** "
                       "(>= 1: torchslim as fast or faster).")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n".join(render(p) for p in sys.argv[1:]))
