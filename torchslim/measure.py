"""Honest measurement: interleaved timing with medians and confidence intervals, memory, size."""
from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[int]:
    """Fix torch's intra-op thread count for the block, and restore it after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Statistics of per-call latencies in milliseconds."""

    n: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    stdev_ms: float
    iqr_ms: float
    ci95_ms: tuple[float, float]  # distribution-free 95% confidence interval of the median
    first_call_ms: float | None = None  # includes compilation, reported apart from the steady state
    batch_size: int = 1

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    @property
    def throughput_per_s(self) -> float:
        """The same as `throughput`, under the name results.json gives it."""
        return self.throughput

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95_ms"] = list(self.ci95_ms)
        d["throughput_per_s"] = self.throughput
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Timing | None:
        """The inverse of to_dict; None without a median. Derived (`throughput_per_s`) and unknown
        keys are ignored; a statistic an older file lacks reads as NaN."""
        if not isinstance(d, dict) or d.get("median_ms") is None:
            return None
        nan = math.nan
        ci = d.get("ci95_ms") or (nan, nan)
        return cls(n=int(d.get("n") or 0), median_ms=float(d["median_ms"]),
                   **{k: nan if d.get(k) is None else float(d[k]) for k in ("p90_ms", "mean_ms", "stdev_ms", "iqr_ms")},
                   ci95_ms=(float(ci[0]), float(ci[1])), first_call_ms=d.get("first_call_ms"),
                   batch_size=int(d.get("batch_size") or 1))

    def __getitem__(self, key: str):
        """Dict-style reads (`timing["median_ms"]`), as when RecipeResult.timing was a dict."""
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


def summarize(samples_ms: list[float], first_call_ms: float | None = None, batch_size: int = 1) -> Timing:
    if not samples_ms:
        raise ValueError("no timing samples")
    xs = sorted(samples_ms)
    n = len(xs)
    q = statistics.quantiles(xs, n=10, method="inclusive") if n > 1 else [xs[0]] * 9
    q4 = statistics.quantiles(xs, n=4, method="inclusive") if n > 1 else [xs[0]] * 3
    lo, hi = median_ci(xs)
    return Timing(
        n=n, median_ms=statistics.median(xs), p90_ms=q[8], mean_ms=statistics.fmean(xs),
        stdev_ms=statistics.stdev(xs) if n > 1 else 0.0, iqr_ms=q4[2] - q4[0], ci95_ms=(lo, hi),
        first_call_ms=first_call_ms, batch_size=batch_size,
    )


def median_ci(sorted_xs: list[float], z: float = 1.96) -> tuple[float, float]:
    """Order-statistic confidence interval of the median (no normality assumed)."""
    n = len(sorted_xs)
    if n < 3:
        return sorted_xs[0], sorted_xs[-1]
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return sorted_xs[lo], sorted_xs[hi]


def time_call(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[float, Any]:
    """One synchronized call: (milliseconds, result)."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0, out


# The pause before each turn when engines are timed beside PyTorch: on a 2-core AVX2 EPYC, OpenVINO
# INT8 on ResNet-18 at batch 1 timed 19.2 ms right after PyTorch models' turns and 16.6 ms after a
# 50 ms pause, while PyTorch and ONNX Runtime rows did not move (BENCHMARKS.md, 2026-12-07); the
# peer suite found ONNX Runtime's spinning pool needs 50 ms (benchmarks/peers/suite.py).
SETTLE_MS = 50.0


def interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 15,
    target_round_ms: float = 60.0,
    warmup: int = 3,
    max_iters: int = 50,
    device: torch.device | None = None,
    on_round: Callable[[int], None] | None = None,
    settle_ms: float = 0.0,
) -> dict[str, list[float]]:
    """Per-call latencies (ms) of every function, measured round-robin so drift hits all alike.
    (Timing A against B on a shared, noisy machine only means something when both run in the same
    process, interleaved round by round, after warm-up, compilation included.)

    Each function is warmed up first; then in every round each runs for about `target_round_ms`
    (at least once), in an order rotated from round to round. settle_ms > 0: a pause and one
    untimed call before each function's turn, so the worker threads the previous one left spinning
    (PyTorch's OpenMP, ONNX Runtime's pool, OpenVINO's TBB) are asleep when it is timed (SETTLE_MS).
    """
    names = list(fns)
    iters = {}
    for name in names:
        times = [time_call(fns[name], device)[0] for _ in range(max(1, warmup))]
        iters[name] = max(1, min(max_iters, int(target_round_ms / max(min(times), 1e-3))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if settle_ms > 0:
                time.sleep(settle_ms / 1e3)
                fns[name]()
            for _ in range(iters[name]):
                samples[name].append(time_call(fns[name], device)[0])
        if on_round:
            on_round(r)
    return samples


# -- memory ------------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc), so the next calls' working memory shows up as RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    _release_free_memory()
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device | None = None, calls: int = 2, repeats: int = 3) -> dict:
    """Working memory that `calls` calls of `fn` need on top of what is resident before them
    (median of `repeats` measurements).

    CUDA: max allocated bytes above the allocated bytes before. CPU: the rise of the process RSS
    high-water mark after freed heap pages are returned to the OS (Linux lets us reset the mark;
    elsewhere ru_maxrss, an upper bound that never goes down).
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base, "method": "cuda max_memory_allocated"}
    rises, exact = [], True
    for _ in range(repeats):
        exact = _reset_peak_rss()
        before = (_status_kb("VmRSS") if exact else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(calls):
            fn()
        after = (_status_kb("VmHWM") if exact else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rises.append(max(0, after - before) * 1024)
    return {"peak_bytes": int(statistics.median(rises)),
            "method": "RSS high-water rise" if exact else "ru_maxrss rise (upper bound)"}


def rss_bytes() -> int:
    return (_status_kb("VmRSS") or 0) * 1024


# -- size --------------------------------------------------------------------------------------

def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile's wrapper, if any."""
    return getattr(model, "_orig_mod", model)


def script_module(model: nn.Module) -> torch.jit.ScriptModule | None:
    """The TorchScript module a recipe produced: the model itself, or the one a runtime wrapper keeps
    as its `torchscript_module` (techniques.torchscript.StaticRuntime); else None."""
    model = getattr(model, "torchscript_module", model)
    return model if isinstance(model, torch.jit.ScriptModule) else None


class _ByteCounter:
    """A write-only file that counts what is written and keeps none of it."""

    def __init__(self):
        self.n = 0

    def write(self, b) -> int:
        k = memoryview(b).nbytes
        self.n += k
        return k

    def flush(self) -> None:
        pass


def serialized_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take on disk (TorchScript archive or torch.save'd state dict), counted as
    they are written (no in-memory copy of the model: on a 1.5B FP32 model a BytesIO doubled the peak)."""
    model = unwrap(model)
    buf = _ByteCounter()
    scripted = script_module(model)
    if scripted is not None:
        torch.jit.save(scripted, buf)
    else:
        torch.save(model.state_dict(), buf)
    return buf.n


def parameter_bytes(model: nn.Module) -> int:
    model = unwrap(model)
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def thread_info() -> dict:
    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


# -- noise: when a comparison can be trusted ------------------------------------------------------

WIDE_SPREAD = 1.25  # a baseline whose median's 95% interval spans more than this ratio is too noisy


def spread(timing: Timing) -> float:
    """hi/lo of a Timing's 95% interval of the median (1.0 = perfectly tight)."""
    lo, hi = timing.ci95_ms
    return hi / lo if lo > 0 else math.inf


def speedup_interval(base: Timing, other: Timing) -> tuple[float, float]:
    """A conservative 95% interval of base/other from the two medians' intervals."""
    (blo, bhi), (olo, ohi) = base.ci95_ms, other.ci95_ms
    return (blo / ohi if ohi > 0 else 0.0, bhi / olo if olo > 0 else math.inf)


def quick_ratio(base: Callable[[], Any], fn: Callable[[], Any], *, rounds: int = 12, target_round_ms: float = 10.0,
                device: torch.device | None = None, settle_ms: float = 0.0) -> dict:
    """A brief interleaved A/B (the early check of the search): speedup of `fn` over `base` with
    its 95% interval, from `rounds` short rounds after two warm-up calls each."""
    xs = interleaved({"base": base, "fn": fn}, rounds=rounds, target_round_ms=target_round_ms, warmup=2,
                     max_iters=20, device=device, settle_ms=settle_ms)
    b, f = summarize(xs["base"]), summarize(xs["fn"])
    lo, hi = speedup_interval(b, f)
    return {"speedup": b.median_ms / f.median_ms, "ci95": [lo, hi], "calls": len(xs["base"]) + len(xs["fn"]),
            "baseline_spread": spread(b)}


def machine_load() -> dict:
    """The OS's 1-minute load average against the core count (None where the OS does not tell)."""
    try:
        load1 = os.getloadavg()[0]
    except (OSError, AttributeError):
        load1 = None
    return {"loadavg_1m": load1, "cores": os.cpu_count()}


def verdict(base: Timing, others: dict[str, Timing], threads: int) -> dict:
    """Is the final interleaved timing good enough to call recipes slower? Returns {"reliable",
    "why", "suggestion", "baseline_spread", "undecided", load...}: unreliable when the baseline's
    own interval is wider than WIDE_SPREAD (then no recipe is called slower unless its interval
    says so)."""
    width = spread(base)
    undecided = [n for n, t in others.items() if speedup_interval(base, t)[0] <= 1.0 <= speedup_interval(base, t)[1]]
    load = machine_load()
    # The load average counts our own `threads` busy threads too; what is left is other processes.
    others_load = max(0.0, load["loadavg_1m"] - threads) if load["loadavg_1m"] is not None else 0.0
    busy = others_load > 0.5
    out = {"reliable": width <= WIDE_SPREAD, "baseline_spread": width, "undecided": undecided, **load,
           "others_load": others_load, "why": None, "suggestion": None}
    if not out["reliable"]:
        out["why"] = (f"measurement unreliable: the baseline's 95% interval spans {width:.1f}x"
                      + (f"; the machine is busy (load {load['loadavg_1m']:.1f} on {load['cores']} cores)" if busy else ""))
    cores = load["cores"] or threads
    fewer = max(1, min(threads - 1, int(round(cores - others_load))))
    if busy and threads > 1 and fewer < threads:
        out["suggestion"] = f"other processes compete for the cores: try --threads {fewer} (now {threads})"
    return out
