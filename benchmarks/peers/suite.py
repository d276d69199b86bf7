"""One case, in one process: prepare every method, check its fidelity against FP32 eager on
held-out batches, then time all of them together, round-robin.

Timing is interleaved as torchslim.measure.interleaved does it, with a pause before each method's
turn so no engine's idle worker threads are still spinning (see settled_interleaved).

A method that fails at any step becomes a row with its error; the others go on. Each method's
preparation and first call (where torch.compile compiles) run with Inductor's global config
snapshotted and restored, so a library that sets process-wide flags (torchao's quantize_ with
set_inductor_config=True, its X86 quantizer's passes) does not change how the next one compiles.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Any, Callable

import torch

from benchmarks.peers import cases
from benchmarks.peers.common import METHODS, Env, Method, first_line
from torchslim import measure
from torchslim.fidelity import compare, output_tensors

# Registration order is the preparation order: PyTorch first, torchslim after torchao (its
# static INT8 imports torchao's X86 quantizer, which installs Inductor passes for the process),
# then the engines outside PyTorch.
from benchmarks.peers import torch_peers, ort_peers, ov_peers  # noqa: E402,F401  (register the methods)

SETTLE_MS = 100.0  # pause before each method's turn; see settled_interleaved


def methods_for(case: cases.Case, skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> list[Method]:
    out = [m for m in METHODS if case.transformer or not m.transformer_only]
    return [m for m in out if m.name not in skip and (not only or m.name in only or m.name == "fp32-eager")]


@contextlib.contextmanager
def isolated_globals():
    """Inductor's config and the quantized engine as they were before the block."""
    import torch._inductor.config as inductor_config

    before, engine = inductor_config.get_config_copy(), torch.backends.quantized.engine
    try:
        yield
    finally:
        now = inductor_config.get_config_copy()
        for k, v in before.items():
            if now.get(k) is not v and now.get(k) != v:
                setattr(inductor_config, k, v)
        torch.backends.quantized.engine = engine


def _stack(outs: list[Any]) -> list[torch.Tensor]:
    """The outputs of several batches as one list of tensors (each concatenated on dim 0)."""
    per_call = [output_tensors(o) for o in outs]
    return [torch.cat([c[i].detach().float() for c in per_call]) for i in range(len(per_call[0]))]


def run_case(case: cases.Case, *, threads: int, rounds: int, target_round_ms: float, warmup: int, recipe: dict | None,
             task_metric: bool, max_samples: tuple[int, int] | None = None, settle_ms: float = SETTLE_MS,
             skip: tuple[str, ...] = (), only: tuple[str, ...] = (),
             progress: Callable[[str], None] = lambda s: None) -> dict:
    torch.set_num_threads(threads)
    torch._dynamo.config.recompile_limit = 64  # several compiled copies of the same module classes
    torch._dynamo.config.accumulated_recompile_limit = 4096
    t_case = time.perf_counter()
    bundle = cases.build(case, task_metric=task_metric, max_samples=max_samples)
    bundle.model.eval()
    with torch.no_grad():
        refs = _stack([bundle.model(*x) for x in bundle.eval_inputs])
    rows, timed = [], {}
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        env = Env(threads=threads, tmp=tmp, recipe=recipe)
        for m in methods_for(case, skip, only):
            progress(m.name)
            t_method = time.perf_counter()
            row = {"method": m.name, "engine": m.engine, "precision": m.precision, "status": "ok", "notes": []}
            rows.append(row)
            try:
                with isolated_globals():
                    t0 = time.perf_counter()
                    prep = m.prepare(bundle, env)
                    row["prep_s"] = time.perf_counter() - t0
                    call = prep.bind(bundle.example)
                    time.sleep(settle_ms / 1e3)
                    row["first_call_ms"], _ = measure.time_call(call)
                row["shared_prep_s"] = prep.shared_prep_s
                row["notes"], row["size_bytes"] = prep.notes, prep.size_bytes
                row["precision"] = prep.precision or m.precision
                fid = compare(refs, _stack([prep.run(x) for x in bundle.eval_inputs]))
                row["fidelity"] = fid.to_dict()
                if not case.classifier:
                    row["fidelity"]["top1_agreement"] = None
                timed[m.name] = call
            except Exception as e:  # noqa: BLE001 - a method's failure is a row, not a crash
                row["status"], row["error"] = "failed", first_line(e)
            progress(f"{m.name}: {row['status']} ({time.perf_counter() - t_method:.0f} s)"
                     + (f": {row.get('error')}" if row["status"] != "ok" else ""))
        progress("timing")
        t_timing = time.perf_counter()
        samples = _time_all(timed, rows, rounds=rounds, target_round_ms=target_round_ms, warmup=warmup,
                            settle_ms=settle_ms)
        progress(f"timing: done ({time.perf_counter() - t_timing:.0f} s)")
    by = {r["method"]: r for r in rows}
    for name, xs in samples.items():
        by[name]["timing"] = measure.summarize(xs, batch_size=case.batch).to_dict()
    base = (by.get("fp32-eager") or {}).get("timing")
    slim = (by.get("torchslim") or {}).get("timing")
    for r in rows:
        t = r.get("timing")
        if t and base:
            r["vs_fp32"] = base["median_ms"] / t["median_ms"]
        if t and slim:
            r["vs_torchslim"] = slim["median_ms"] / t["median_ms"]
    return {"case": case.id, "title": case.title, "batch": case.batch, "rows": rows, "recipe": recipe,
            "task_metric": task_metric, "case_s": time.perf_counter() - t_case}


def settled_interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int, target_round_ms: float, warmup: int,
                        settle_ms: float = SETTLE_MS, max_iters: int = 50) -> dict[str, list[float]]:
    """measure.interleaved's schedule (warm-up; per round, each method runs about target_round_ms,
    in an order rotated every round), plus a pause and one untimed call before each method's turn.

    The engines keep worker threads that busy-wait after a call: ONNX Runtime's pool spins for
    tens of milliseconds, OpenMP (PyTorch) and TBB (OpenVINO) for less. On 2 cores, PyTorch calls
    made while ORT's threads still spin measured 100-150 ms instead of 0.8 ms (Fashion-MNIST CNN,
    batch 1), with a 20 ms pause still as bad and 50 ms clean. So each method is timed with the
    others' threads asleep, as it would run alone in a server.
    """
    names, iters = list(fns), {}
    for name in names:
        time.sleep(settle_ms / 1e3)
        times = [measure.time_call(fns[name])[0] for _ in range(max(1, warmup))]
        iters[name] = max(1, min(max_iters, int(target_round_ms / max(min(times), 1e-3))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(settle_ms / 1e3)
            fns[name]()
            samples[name] += [measure.time_call(fns[name])[0] for _ in range(iters[name])]
    return samples


def _time_all(fns: dict, rows: list[dict], **kw) -> dict[str, list[float]]:
    """settled_interleaved over every prepared method; one that raises while timed is dropped
    (its row marked failed) and the rest are timed again."""
    fns = dict(fns)
    by = {r["method"]: r for r in rows}
    while fns:
        failed: dict[str, BaseException] = {}

        def guard(name, fn):
            def call():
                try:
                    return fn()
                except Exception as e:  # noqa: BLE001
                    failed[name] = e
                    raise
            return call

        try:
            return settled_interleaved({n: guard(n, f) for n, f in fns.items()}, **kw)
        except Exception:  # noqa: BLE001
            if not failed:
                raise
            for name, e in failed.items():
                by[name]["status"], by[name]["error"] = "failed", "while timed: " + first_line(e)
                fns.pop(name)
    return {}
