"""Static INT8 on PyTorch's eager quantized kernels, TorchScript-frozen: the small-model fast path.

The flow is torch.ao's FX graph mode (deprecated upstream in favour of PT2E, still shipped by
torch 2.13): symbolic trace -> prepare_fx (Conv-BN-ReLU fused, observers) -> calibration ->
convert_fx (quantized::conv2d_relu, quantized::linear, ... with prepacked int8 weights) ->
torch.jit.trace + freeze, so no Python runs between the kernels.

Why it exists beside static_int8 (PT2E + Inductor): on small models the PT2E path is bound by
per-op cost, not by the INT8 math. On the Fashion-MNIST CNN at batch 1, oneDNN's verbose log puts
the convolutions and matmuls at about 0.09 ms of a 0.47 ms call; Inductor's onednn::qconv_pointwise
builds its oneDNN primitive descriptor on every call (~54 us per conv against ~20 us of kernel)
and the Python wrapper around the compiled graph costs the rest. The eager quantized ops keep
their primitives in a cache (~23 us per conv), and TorchScript calls them from C++: 0.14 ms.
On large inputs both run the same oneDNN kernels and PT2E+Inductor, with its fusions, can win;
`optimize` measures both and keeps the faster.

Its artifact is the same as every recipe's (weights + recipe, re-applied on load). The frozen
TorchScript module can also be saved with torch.jit.save and served from C++ (libtorch).
"""
from __future__ import annotations

import platform
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import backends
from .. import device as dev
from ..errors import NotApplicable, first_line
from ..workload import eval_mode
from .base import Context, register
from .static_int8 import NO_CALIBRATION, StaticInt8Config, _needs_reduce_range, _resolve_skip, calibrate

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class StaticInt8FxConfig(StaticInt8Config):
    """StaticInt8Config's options (observer, per_channel, max_samples, skip), lowered to eager INT8
    kernels and TorchScript instead of Inductor."""

    name = "static_int8_fx"

    def label(self) -> str:
        return super().label().replace("static-int8", "static-int8-ts", 1)


def _applies(model, cfg: StaticInt8FxConfig, ctx: Context) -> str | None:
    if ctx.device.type != "cpu":
        return "PyTorch's eager INT8 kernels run on CPUs only"
    if not dev.is_x86():
        return f"wired for x86 CPUs (fbgemm/oneDNN INT8 kernels), not {platform.machine()}"
    if ctx.calibration is None:
        return NO_CALIBRATION
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be symbolically traced"
    from .compile import Compiled

    if isinstance(model, (torch._dynamo.eval_frame.OptimizedModule, Compiled)):
        return "the model is already torch.compile'd: quantize before compiling"
    if ctx.example.kwargs:
        return "FX graph-mode quantization traces positional tensor inputs only; this model takes keyword inputs"
    if not any(isinstance(m, _LAYERS) for m in model.modules()):
        return "no Linear/Conv layers to quantize"
    if backends.fx_static_engine(_needs_reduce_range()) is None:
        return "this torch build has no fbgemm/oneDNN quantized engine"
    return backends.fx_static_missing()


@register(StaticInt8FxConfig, applies=_applies)
def apply_static_int8_fx(model, cfg: StaticInt8FxConfig, ctx: Context):
    model = eval_mode(model)
    example = ctx.example.to(ctx.device)
    float_modules = _resolve_skip(model, cfg.skip)
    reduce_range = _needs_reduce_range()
    engine = backends.fx_static_engine(reduce_range)
    layers = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    _inline_flatten(model)
    try:
        prepared = backends.fx_static_prepare(model, tuple(example.args), engine, cfg.observer, cfg.per_channel,
                                              reduce_range, float_modules)
    except Exception as e:  # noqa: BLE001 - symbolic tracing refuses data-dependent control flow etc.
        raise NotApplicable(f"torch.fx symbolic tracing cannot capture this model ({_quote(e)})",
                            "use static_int8 (PT2E: torch.export handles more Python)") from e
    with torch.no_grad():
        seen = calibrate(prepared, ctx, example, cfg.max_samples)
        converted = backends.fx_static_convert(prepared, engine)
    details = _summarize(converted, layers, float_modules)
    details.update(observer=cfg.observer, per_channel=cfg.per_channel, activations="static (calibrated)",
                   calibration=seen, engine=engine, reduce_range=reduce_range)
    if not sum(details["quantized"].values()):
        raise NotApplicable("FX graph-mode quantization quantized none of the model's Conv/Linear layers",
                            "use static_int8 (PT2E) or dynamic_int8")
    scripted = _freeze(converted, example, engine)
    ctx.details["static_int8_fx"] = details
    ctx.notes.append(_note(details))
    return scripted


class _Flatten(nn.Module):
    """nn.Flatten as a traced-through torch.flatten call. FX quantization keeps torch.flatten on
    int8 tensors, but wraps a leaf nn.Flatten module in a dequantize/quantize pair (torch 2.13)."""

    def __init__(self, start_dim: int, end_dim: int):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return torch.flatten(x, self.start_dim, self.end_dim)


def _inline_flatten(model: nn.Module) -> None:
    """In place, on the fresh copy optimize() hands us (Flatten holds no weights)."""
    for name, m in list(model.named_modules()):
        if type(m) is nn.Flatten and name:
            model.set_submodule(name, _Flatten(m.start_dim, m.end_dim))


def _freeze(converted: nn.Module, example, engine: str) -> torch.jit.ScriptModule:
    """Trace the converted model and freeze it: weights become constants, no Python per call."""
    try:
        with torch.no_grad(), warnings.catch_warnings(), backends.quantized_engine(engine):
            warnings.simplefilter("ignore")  # tracer warnings about frozen Python-side shape checks
            return torch.jit.freeze(torch.jit.trace(converted, tuple(example.args), check_trace=False, strict=False).eval())
    except Exception as e:  # noqa: BLE001
        raise NotApplicable(f"TorchScript cannot trace the quantized model ({_quote(e)})",
                            "use static_int8 (PT2E + Inductor)") from e


def _summarize(converted: nn.Module, layers: dict[str, str], float_modules: tuple[str, ...]) -> dict:
    """Which Conv/Linear layers became quantized modules. FX fuses Conv-BN-ReLU into the conv's
    name, so a layer counts as quantized when its name is now a quantized module."""
    mods = dict(converted.named_modules())
    quantized: Counter = Counter()
    left = []
    for name, kind in layers.items():
        if name in mods and backends.fx_is_quantized_module(mods[name]):
            quantized[kind] += 1
        else:
            left.append(f"{name} ({kind})")
    return {"quantized": dict(quantized), "total": dict(Counter(layers.values())), "left_in_float": left,
            "skipped_by_config": list(float_modules)}


def _note(d: dict) -> str:
    parts = [f"{d['quantized'].get(k, 0)}/{n} {k}" for k, n in sorted(d["total"].items())]
    s = "quantized " + ", ".join(parts) + f" on {d['engine']} eager INT8 kernels (torch.ao FX, TorchScript-frozen; legacy upstream)"
    if d["left_in_float"]:
        s += "; left in float: " + ", ".join(d["left_in_float"][:6]) + (" ..." if len(d["left_in_float"]) > 6 else "")
    return s + f"; calibrated on {d['calibration']['samples']} samples ({d['observer']} observer)"


def _quote(e: Exception) -> str:
    return f"{type(e).__name__}: {first_line(e)[:300]}"


__all__ = ["StaticInt8FxConfig"]
