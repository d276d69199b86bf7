"""Mixed precision for training, as building blocks: pick a precision for the device once, then run
each step under its autocast context and through its gradient scaler.

- CPU: BF16 autocast where oneDNN runs BF16 natively (AVX-512 BF16 / AMX); elsewhere FP32, because
  emulated BF16 is slower than FP32. No gradient scaler: BF16 has FP32's exponent range.
- CUDA: BF16 autocast on GPUs with native BF16 (Ampere and newer), else FP16 autocast with a
  gradient scaler (FP16 gradients underflow without loss scaling).

Weights, optimizer state and the loss stay FP32 in every mode; only the ops autocast lists run in
the low precision. `compare()` measures what a precision buys: step time and peak memory of the
same training step against FP32, interleaved in one process.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import device as dev
from ..errors import SlimError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Amp:
    """The precision a training step runs in, on one device type."""

    precision: str  # "fp32" | "bf16" | "fp16"
    device_type: str  # "cpu" | "cuda"
    note: str = ""  # why this precision was chosen, or a caveat

    def __post_init__(self):
        if self.precision not in _DTYPES:
            raise ValueError(f"unknown precision {self.precision!r}: use fp32, bf16 or fp16")

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def scales_gradients(self) -> bool:
        """FP16 needs loss scaling so small gradients do not flush to zero; BF16 and FP32 do not."""
        return self.precision == "fp16"

    def autocast(self):
        """The context to run forward and loss in (a no-op for FP32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only where the precision needs one (its calls are no-ops otherwise)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_gradients)


def choose(precision: str = "auto", device: torch.device | str = "cpu") -> Amp:
    """The Amp for `precision` on `device`; "auto" picks the fastest precision that trains safely."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise SlimError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    kind = device.type
    if kind not in ("cpu", "cuda"):
        raise SlimError(f"mixed precision training is not wired for device '{device}'", "use cpu or cuda")
    bf16_native = dev.supports_bf16(device)
    if precision == "auto":
        if bf16_native:
            return Amp("bf16", kind, "auto: native BF16 (AMX/AVX-512 BF16)" if kind == "cpu" else "auto: GPU with native BF16")
        if kind == "cuda":
            return Amp("fp16", kind, "auto: FP16 with a gradient scaler (this GPU has no native BF16)")
        return Amp("fp32", kind, "auto: this CPU has no native BF16 (AVX-512 BF16/AMX); emulated BF16 is slower than FP32")
    if precision == "bf16" and not bf16_native:
        return Amp("bf16", kind, "BF16 is emulated on this device: expect it to be slower than FP32")
    if precision == "fp16" and kind == "cpu" and not dev.supports_fp16(device):
        return Amp("fp16", kind, "FP16 is emulated on this CPU (no AMX-FP16/AVX512-FP16): expect it to be slower than FP32")
    return Amp(precision, kind)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      clip_norm: float | None = None, params: Any = None) -> bool:
    """loss.backward() and optimizer.step(), through the scaler; optional gradient-norm clipping
    (on the unscaled gradients). Returns False when FP16 overflowed and the step was skipped."""
    scaler.scale(loss).backward()
    if clip_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params if params is not None else
                                       [p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    if not scaler.is_enabled():
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before  # the scale only drops when this step's gradients overflowed


# -- measurement ---------------------------------------------------------------------------------

StepFn = Callable[[], None]


def make_step(model: nn.Module, batch: tuple, loss_fn: Callable[[Any, Any], torch.Tensor], amp: Amp,
              lr: float = 1e-4) -> StepFn:
    """One full training step (forward, loss, backward, AdamW update) of a private copy of `model`
    on a fixed batch `(inputs, target)`: inputs is a tensor, a tuple of tensors or a dict."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = amp.scaler()
    inputs, target = batch

    def step():
        with amp.autocast():
            if isinstance(inputs, dict):
                out = model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                out = model(*inputs)
            else:
                out = model(inputs)
            loss = loss_fn(out, target)
        opt.zero_grad(set_to_none=True)
        backward_and_step(loss, opt, scaler)

    return step


def compare(model: nn.Module, batch: tuple, loss_fn: Callable[[Any, Any], torch.Tensor],
            precisions: tuple[str, ...] = ("fp32", "bf16"), device: torch.device | str = "cpu",
            rounds: int = 10, warmup: int = 3, memory: bool = True) -> dict:
    """Step time (interleaved, medians with 95% CIs) and peak step memory of the same training step
    in each precision; `ratio` is FP32's median over each precision's (above 1: faster than FP32)."""
    from .. import measure

    device = torch.device(device)
    steps = {p: make_step(model, batch, loss_fn, choose(p, device)) for p in precisions}
    samples = measure.interleaved(steps, rounds=rounds, warmup=warmup, device=device, target_round_ms=200.0)
    out: dict[str, Any] = {}
    for p, xs in samples.items():
        t = measure.summarize(xs)
        out[p] = {"median_ms": t.median_ms, "ci95_ms": list(t.ci95_ms), "n": t.n, "note": choose(p, device).note}
        if memory:
            mem = measure.peak_memory(steps[p], device=device, calls=1, repeats=3)
            out[p].update(peak_bytes=mem["peak_bytes"], memory_method=mem["method"])
    base = out.get("fp32")
    if base:
        for p in precisions:
            out[p]["speedup_vs_fp32"] = base["median_ms"] / out[p]["median_ms"]
            if memory and out[p]["peak_bytes"]:
                out[p]["memory_vs_fp32"] = out[p]["peak_bytes"] / max(1, base["peak_bytes"])
    return out
