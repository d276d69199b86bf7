"""The final interleaved timing of the survivors, and the verdict on each against the baseline."""
from __future__ import annotations

import time

import torch

from .. import engines, measure
from .config import SearchState
from .trial import caller

MAX_EXTRA_TIMING = 2  # while the baseline's interval is too wide, up to this many more sets of `rounds`


def settle_ms(models, device) -> float:
    """The pause before each timed turn: measure.SETTLE_MS where an engine model is among `models`
    on the CPU (its threads and PyTorch's OpenMP workers must be asleep when the other is timed), else 0."""
    return measure.SETTLE_MS if device.type == "cpu" and any(engines.find(m) for m in models) else 0.0


def final_timing(s: SearchState) -> None:
    """Interleaved timing of the survivors; more rounds while the baseline's own interval is too wide
    (and the time budget, if any, has time left for another set as long as the first took); a
    recipe is called slower only when its interval says so (measure.verdict)."""
    models, example, workload, config, device, run = s.models, s.example, s.workload, s.config, s.device, s.run
    deadline = s.budget.deadline
    t0 = time.perf_counter()
    by = {r.name: r for r in run.recipes}
    fns = {n: caller(m, example) for n, m in models.items()}
    settle = settle_ms(models.values(), device)
    samples = measure.interleaved(fns, rounds=config.rounds, target_round_ms=config.target_round_ms, device=device,
                                  settle_ms=settle)
    extra = 0
    while True:
        timings = {n: measure.summarize(xs, by[n].first_call_ms, workload.example.batch_size) for n, xs in samples.items()}
        verdict = measure.verdict(timings["baseline"], {n: t for n, t in timings.items() if n != "baseline"},
                                  torch.get_num_threads())
        per_set = (time.perf_counter() - t0) / (1 + extra)
        out_of_time = deadline is not None and time.perf_counter() + per_set > deadline
        if verdict["reliable"] or extra >= MAX_EXTRA_TIMING or out_of_time:
            if not verdict["reliable"] and out_of_time:
                verdict["why"] += "; no time left in the budget for more rounds"
            break
        extra += 1
        more = measure.interleaved(fns, rounds=config.rounds, target_round_ms=config.target_round_ms, device=device,
                                   settle_ms=settle)
        samples = {n: samples[n] + more[n] for n in samples}
    verdict["rounds"] = config.rounds * (1 + extra)
    run.measurement = verdict
    base_t = timings["baseline"]
    for name, m in models.items():
        r = by[name]
        r.timing = timings[name]
        r.speedup = base_t.median_ms / r.timing.median_ms
        eng = engines.find(m) if device.type == "cpu" else None
        if eng is None:
            peak = measure.peak_memory(caller(m, example), device)
        else:  # one build + one call: the session's memory, not only the calls'
            peak = measure.peak_memory(engines.build_and_call(eng, caller(m, example)), device, calls=1, repeats=1)
            r.notes.append("peak memory: the engine's session (its arenas and its copy of the weights) built and called once")
        r.peak_memory_bytes = peak["peak_bytes"]
        run.machine["peak_memory_method"] = peak["method"]
        if r.status != "ok" or r.speedup > 1.0:
            continue
        lo, hi = measure.speedup_interval(base_t, r.timing)
        if hi < 1.0:
            r.status, r.reason = "rejected", f"slower than the baseline ({r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x)"
        elif verdict["reliable"]:
            r.status, r.reason = "rejected", f"not faster than the baseline ({r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x)"
        else:
            r.status, r.reason = "inconclusive", f"{verdict['why']}: {r.speedup:.2f}x, 95% interval {lo:.2f}-{hi:.2f}x"
