"""Static INT8 (PT2E): int8 weights, uint8 activations calibrated on representative inputs, lowered by
Inductor to oneDNN INT8 kernels (x86 CPUs); and PT2E dynamic INT8 (activations quantized per call)."""
from __future__ import annotations

import contextlib
import contextvars
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..compiled import Frozen
from ..errors import NotApplicable, SlimError, first_line
from ..inputs import Example
from ..quant import needs_reduce_range, pt2e
from ..quant.common import match_names
from ..workload import eval_mode
from .base import Context, TechniqueConfig, register
from .predicates import NO_CALIBRATION, compiled, lacks, no_calibration, not_cpu, not_x86, scripted

OBSERVERS = pt2e.OBSERVERS


@dataclass(frozen=True)
class StaticInt8Config(TechniqueConfig):
    name = "static_int8"
    needs_calibration = True
    lossy = True
    per_layer_skip = True
    observer: str = "histogram"  # activation range observer: "histogram" | "minmax" | "moving_average"
    per_channel: bool = True  # weights: one scale per output channel (else one per tensor)
    max_samples: int = 256  # calibration stops once this many samples (batch rows) have been seen
    skip: tuple[str, ...] = ()  # fnmatch patterns of module names to keep in floating point

    def __post_init__(self):
        _validate(self)
        if self.observer not in OBSERVERS:
            raise ValueError(f"unknown observer {self.observer!r}: use one of {', '.join(OBSERVERS)}")
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")

    def label(self) -> str:
        return "static-int8" + ("" if self.observer == "histogram" else f"-{self.observer.replace('_', '-')}") \
            + ("" if self.per_channel else "-per-tensor") + ("-skip" if self.skip else "")


@dataclass(frozen=True)
class Pt2eDynamicInt8Config(TechniqueConfig):
    """PT2E dynamic INT8: int8 weights, activations quantized per call; no calibration."""

    name = "pt2e_dynamic_int8"
    lossy = True
    per_layer_skip = True
    per_channel: bool = True
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _validate(self)

    def label(self) -> str:
        return "pt2e-dynamic-int8" + ("" if self.per_channel else "-per-tensor") + ("-skip" if self.skip else "")


def _validate(cfg) -> None:
    if isinstance(cfg.skip, str) or not all(isinstance(p, str) and p for p in cfg.skip):
        raise ValueError(f"skip must be a tuple of module-name patterns, not {cfg.skip!r}")
    if not isinstance(cfg.per_channel, bool):
        raise ValueError(f"per_channel must be true or false, not {cfg.per_channel!r}")


# -- applies -----------------------------------------------------------------------------------

_PER_TENSOR = ("per-tensor weights are not lowered to INT8 kernels by the X86 Inductor passes (torchao 0.18): "
               "the model would run FP32 convs/matmuls between quantize/dequantize ops; use per_channel=True")


def _applies_common(model, cfg, ctx: Context) -> str | None:
    return (not_cpu(ctx, "the PT2E X86InductorQuantizer flow targets x86 CPUs (oneDNN INT8 kernels); not wired for CUDA")
            or not_x86("the X86InductorQuantizer's oneDNN INT8 kernels need an x86 CPU")
            or scripted(model, "a TorchScript model cannot be captured by torch.export")
            or compiled(model)
            or (None if cfg.per_channel else _PER_TENSOR)
            or lacks(model, (nn.Linear, nn.Conv1d, nn.Conv2d), "no Linear/Conv layers to quantize")
            or pt2e.missing())


def _applies_static(model, cfg: StaticInt8Config, ctx: Context) -> str | None:
    return no_calibration(ctx) or _applies_common(model, cfg, ctx)


def _applies_dynamic(model, cfg: Pt2eDynamicInt8Config, ctx: Context) -> str | None:
    return _applies_common(model, cfg, ctx) or lacks(
        model, (nn.Linear,), "PT2E dynamic INT8 covers Linear layers and this model has none")


# -- apply -------------------------------------------------------------------------------------

@register(StaticInt8Config, applies=_applies_static)
def apply_static_int8(model, cfg: StaticInt8Config, ctx: Context):
    return _quantize(model, cfg, ctx, is_dynamic=False)


@register(Pt2eDynamicInt8Config, applies=_applies_dynamic)
def apply_pt2e_dynamic_int8(model, cfg: Pt2eDynamicInt8Config, ctx: Context):
    return _quantize(model, cfg, ctx, is_dynamic=True)


def _quantize(model: nn.Module, cfg, ctx: Context, is_dynamic: bool) -> nn.Module:
    prepared, float_modules, seen, dynamic = prepare_calibrated(model, cfg, ctx, is_dynamic)
    with torch.no_grad():
        converted = pt2e.convert(prepared)
    pt2e.drop_unused_tensors(converted)
    details = pt2e.summarize(converted, float_modules)
    details.update(observer=None if is_dynamic else cfg.observer, per_channel=cfg.per_channel,
                   activations="dynamic per call" if is_dynamic else "static (calibrated)",
                   calibration=seen, dynamic_shapes=dynamic, reduce_range=needs_reduce_range())
    ctx.details["static_int8" if not is_dynamic else "pt2e_dynamic_int8"] = details
    ctx.notes.append(_note(details))
    return Frozen(converted)


_CALIBRATED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("torchslim_calibrated", default=None)


@contextlib.contextmanager
def calibration_cache():
    """Within the block, prepare_calibrated() captures and calibrates each (model weights, config,
    calibration data, example) once and hands out copies: the search's static-int8 recipe and the
    sensitivity rankings of static-int8, static-int8-ts[-x86-sr] (simulated on the same PT2E graph)
    and pt2e-dynamic-int8 share one export and one calibration pass."""
    token = _CALIBRATED.set({})
    try:
        yield
    finally:
        _CALIBRATED.reset(token)


def _fingerprint(model: nn.Module, cfg, ctx: Context, is_dynamic: bool) -> tuple:
    """What the prepared graph depends on; the weights by name, shape and a sum (cheap, and copies
    of one model agree)."""
    with torch.no_grad():
        weights = tuple((n, tuple(t.shape), str(t.dtype), float(t.double().sum()) if t.is_floating_point() else int(t.sum()))
                        for n, t in model.state_dict().items() if isinstance(t, torch.Tensor))
    example = tuple((tuple(t.shape), str(t.dtype), float(t.double().sum())) for t in ctx.example.tensors())
    return (type(model).__qualname__, weights, example, getattr(cfg, "observer", None), cfg.per_channel, tuple(cfg.skip),
            getattr(cfg, "max_samples", None), is_dynamic, id(ctx.calibration), str(ctx.device))


def prepare_calibrated(model: nn.Module, cfg, ctx: Context, is_dynamic: bool = False):
    """The first half of the flow: export, annotate, insert observers, calibrate (static) or record
    the weight ranges (dynamic). Returns (prepared graph, module names kept in float, calibration
    counts, whether the export has dynamic shapes). sensitivity.py reads the observers from here.
    Inside calibration_cache() a repeated call returns a copy of the first one's result."""
    cache = _CALIBRATED.get()
    if cache is None:
        return _prepare_calibrated(model, cfg, ctx, is_dynamic)
    fp = _fingerprint(model, cfg, ctx, is_dynamic)
    if fp not in cache:
        result = _prepare_calibrated(model, cfg, ctx, is_dynamic)
        # The stored graph is only ever copied: convert_pt2e and the probes' switches change theirs.
        cache[fp] = (copy.deepcopy(result[0]), *result[1:])
        return result
    prepared, float_modules, seen, dynamic = cache[fp]
    return copy.deepcopy(prepared), float_modules, dict(seen, reused=True), dynamic


def _prepare_calibrated(model: nn.Module, cfg, ctx: Context, is_dynamic: bool = False):
    model = eval_mode(model)
    example = ctx.example.to(ctx.device)
    float_modules = resolve_skip(model, cfg.skip)
    pt2e.unshare_activations(model, example)
    gm, dynamic = pt2e.export(model, example)
    quantizer = pt2e.x86_quantizer(
        observer=getattr(cfg, "observer", "histogram"), per_channel=cfg.per_channel, is_dynamic=is_dynamic,
        reduce_range=needs_reduce_range(), float_modules=float_modules)
    try:
        prepared = pt2e.prepare(gm, quantizer)
    except (IndexError, NotImplementedError, AssertionError) as e:
        raise SlimError(f"torchao's X86InductorQuantizer could not annotate this model's graph ({type(e).__name__}: {first_line(e)[:200]})",
                        "keep the offending modules in float with skip=('name.*',), or use dynamic_int8") from e
    with torch.no_grad():
        if is_dynamic:
            example(prepared)  # records the weight ranges; activations are quantized per call
            seen = {"batches": 0, "samples": 0}
        else:
            seen = calibrate(prepared, ctx, example, cfg.max_samples)
    return prepared, float_modules, seen, dynamic


def calibrate(model: nn.Module, ctx: Context, example: Example, max_samples: int) -> dict:
    """Run ctx's calibration batches through an observed model until `max_samples` rows have been
    seen (pt2e.calibrate); NotApplicable without calibration data."""
    batches = ctx.calibration() if ctx.calibration is not None else None
    if batches is None:
        raise NotApplicable(NO_CALIBRATION)
    return pt2e.calibrate(model, batches, example, max_samples, device=ctx.device)


def resolve_skip(model: nn.Module, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The module names matching the fnmatch `patterns`, in pattern order; SlimError for a pattern
    that matches nothing."""
    return tuple(match_names([n for n, _ in model.named_modules() if n], patterns))


def _note(d: dict) -> str:
    parts = [f"{d['quantized'].get(k, 0)}/{n} {k}" for k, n in sorted(d["total"].items())]
    s = "quantized " + (", ".join(parts) if parts else "no Conv/Linear layers")
    if d["left_in_float"]:
        shown = d["left_in_float"][:6]
        s += "; left in float: " + ", ".join(shown) + (f" (+{len(d['left_in_float']) - 6} more)" if len(d["left_in_float"]) > 6 else "")
    if d["calibration"]["batches"]:
        s += f"; calibrated on {d['calibration']['samples']} samples ({d['observer']} observer)"
    return s


__all__ = ["StaticInt8Config", "Pt2eDynamicInt8Config", "NO_CALIBRATION", "OBSERVERS", "Frozen", "calibrate",
           "calibration_cache", "prepare_calibrated", "resolve_skip"]
