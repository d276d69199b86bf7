"""llama.cpp candidates for the generation search: the user's GGUF as it is (`llamacpp-gguf`) and
requantized copies (`llamacpp-q8_0`, `-q4_0`, `-q4_k_m`; llama_model_quantize, cached), each in a
worker process (engines/llamacpp.py), judged by the gates the torch recipes pass (perplexity on the
same held-out ids, greedy agreement with the FP32 baseline's tokens, garbage), and returned as row
fields plus the proxy that joins the same interleaved timing. The search adds them in a few lines."""
from __future__ import annotations

import os
import time

from ..engines import llamacpp as engine
from ..errors import first_line
from . import measure, quality
from .runner import eos_ids

AS_IS = "llamacpp-gguf"
QUANTS = ("q8_0", "q4_0", "q4_k_m")
NAMES = (AS_IS,) + tuple(f"llamacpp-{q}" for q in QUANTS)
PPL_WINDOW = 256  # quality.perplexity's window: the same windows, the same perplexity


def is_engine_name(name: str) -> bool:
    return name in NAMES


def _row(name: str, status: str = "ok", reason: str = "", **kw) -> dict:
    return {"name": name, "steps": [], "targets": "both", "status": status, "reason": reason, **kw}


def not_applicable(lm, config) -> str | None:
    """Why no llama.cpp candidate runs for this model and configuration, or None."""
    why = engine.missing()
    if why:
        return why
    if (lm.source or {}).get("format") != "gguf":
        return ("not applicable: the model was not loaded from a GGUF file (llama.cpp runs GGUF; writing one from a "
                "Hugging Face folder with llama.cpp's convert_hf_to_gguf.py is not done yet)")
    if config.batch_size != 1:
        return f"not applicable: the llama.cpp worker generates at batch 1 (--batch-size {config.batch_size})"
    if config.objective == "throughput":
        return "not applicable: --objective throughput ranks decode at --large-batch, and the llama.cpp worker runs batch 1"
    return None


def candidate_rows(lm, ev, config, budget, threads: int, explicit: tuple[str, ...] = ()) -> list[tuple[dict, object]]:
    """[(GenRecipeResult fields, the proxy when the candidate kept quality else None)]: one per name in
    NAMES (or only those in `explicit`, the names --recipes gave). `ev`: the search's evaluation set
    (ids, text, agree, ref_tokens, base_ppl, base_distinct)."""
    names = [n for n in NAMES if n in explicit] if explicit else list(NAMES)
    why = not_applicable(lm, config)
    if why:
        return [(_row(n, "skipped", why), None) for n in names]
    src = lm.source["gguf"]
    src_type = engine.file_type(src)
    out = []
    for name in names:
        if budget.over() and not explicit:
            out.append((_row(name, "skipped", f"time budget ({budget.minutes:g} min) spent"), None))
            continue
        out.append(_candidate(name, src, src_type, lm, ev, config, threads))
    return out


def _n_ctx(ev, config) -> int:
    need = max(ev.ids.shape[1] + config.new_tokens, max((p.shape[1] for p in ev.agree), default=0) + config.agreement_tokens,
               PPL_WINDOW)
    return -(-need // 256) * 256


def _candidate(name: str, src: str, src_type: str, lm, ev, config, threads: int) -> tuple[dict, object]:
    quant = None if name == AS_IS else name.split("-", 1)[1]
    notes, extra = [], {"engine": engine.ENGINE, "source_gguf": src, "source_precision": src_type}
    row = _row(name, notes=notes, extra=extra)
    proxy = None
    try:
        t0 = time.perf_counter()
        if quant is None:
            path = src
            notes.append(f"the GGUF file as it is ({src_type})")
        else:
            path, cached = engine.quantize(src, quant, threads)
            notes.append(f"requantized {src_type} -> {quant.upper()} with llama_model_quantize"
                         + (" (cached)" if cached else ""))
            if not engine.is_float(src_type):
                notes.append(f"the source is {src_type}: its precision bounds this file's quality (requantized from "
                             f"quantized weights, never better than {src_type}; the FP32 baseline is {src_type} dequantized)")
        extra.update(gguf=path, quant=(quant or src_type).upper())
        proxy = engine.LlamaCppLM(path, threads, eos_ids(lm.model), n_ctx=_n_ctx(ev, config))
        proxy.name = name
        row["prepare_s"] = time.perf_counter() - t0
        extra["version"] = f"llama-cpp-python {proxy.worker.info.get('version')}"
        extra["system_info"] = proxy.worker.info.get("system_info", "")
        row["first_call_ms"], tr = measure.first_call(proxy.generate_timed, ev.ids, config.new_tokens)
        toks = [proxy.generate_timed(p, config.agreement_tokens) for p in ev.agree]
        agree = quality.agreement([t.tokens for t in toks], ev.ref_tokens)
        ppl = proxy.perplexity(ev.text, PPL_WINDOW)
        row.update(greedy_agreement=agree["greedy_agreement"], fidelity=agree, perplexity=ppl,
                   ppl_increase_pct=100.0 * (ppl / ev.base_ppl - 1.0), metrics={"perplexity": ppl},
                   metric_drop=ppl - ev.base_ppl, size_bytes=os.path.getsize(path))
    except Exception as e:  # noqa: BLE001 - a native crash, a load or quantize failure: the row fails, the search goes on
        if proxy is not None:
            proxy.worker.kill()
        row.update(status="failed", reason=f"{type(e).__name__}: {first_line(e)}"[:2000])
        return row, None
    bad = quality.garbage(tr.first_logits, ppl, ev.base_ppl, quality.distinct_fraction([t.tokens for t in toks]),
                          ev.base_distinct)
    if bad or row["ppl_increase_pct"] > config.max_ppl_increase:
        proxy.close()
        row.update(status="rejected", reason=f"garbage: {bad}" if bad else
                   f"perplexity {row['ppl_increase_pct']:+.1f}% > +{config.max_ppl_increase:g}%")
        return row, None
    row["reason"] = f"perplexity {row['ppl_increase_pct']:+.1f}%, greedy agreement {agree['greedy_agreement']:.0%}"
    return row, proxy


def peak_bytes(model, ids, new_tokens: int) -> int | None:
    """The memory one generation adds in the engine's worker (as measure.peak_memory does for torch), or
    None when `model` is not an engine proxy."""
    fn = getattr(model, "peak_bytes", None)
    return fn(ids, new_tokens) if callable(fn) else None


def close_all(models: dict) -> None:
    """Stop every engine worker among `models` (after timing and saving)."""
    for m in models.values():
        if isinstance(m, engine.LlamaCppLM):
            m.close()
