"""Static INT8 for nn.Linear, module by module (no graph capture, so it composes with fast_transformer's
packed path): int8 per-channel weights, uint8 inputs with a calibrated scale, oneDNN's INT8 matmul."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import NotApplicable
from ..quant import fx, needs_reduce_range
from ..workload import eval_mode
from .base import Context, register
from .predicates import no_calibration, not_cpu, not_x86, scripted
from .static_int8 import StaticInt8Config, calibrate, resolve_skip


@dataclass(frozen=True)
class StaticLinearInt8Config(StaticInt8Config):
    """StaticInt8Config's options (observer, max_samples, skip) applied module by module to
    nn.Linear layers; weights are always per output channel. Against dynamic INT8 it saves the
    per-call range reduction; inputs outside the calibrated range are clipped (validation decides)."""

    name = "static_linear_int8"

    def __post_init__(self):
        super().__post_init__()
        if not self.per_channel:
            raise ValueError("static_linear_int8 uses per-channel weights only")

    def label(self) -> str:
        return super().label().replace("static-int8", "static-int8-linear", 1)


class StaticInt8Linear(nn.Module):
    """An nn.Linear with int8 weights and a calibrated uint8 input scale, on oneDNN's INT8 matmul.
    The state dict holds the int8 weights, their scales and the bias; the oneDNN-packed copy is
    rebuilt from them (not saved)."""

    def __init__(self, linear: nn.Linear, x_scale: float, x_zero_point: int):
        super().__init__()
        w = linear.weight.detach().float()
        w_scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.clamp(torch.round(w / w_scale[:, None]), -128, 127).to(torch.int8))
        self.register_buffer("weight_scale", w_scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.x_scale, self.x_zero_point = float(x_scale), int(x_zero_point)
        self._w_zero_point = torch.zeros(self.out_features, dtype=torch.long)
        self._packed = None  # oneDNN's blocked copy of weight_int8, made on first call

    def __getstate__(self):  # copies and pickles repack: the blocked tensor has no plain storage
        state = super().__getstate__().copy()
        state["_packed"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = fx.onednn_linear_prepack(self.weight_int8)
        shape = x.shape
        dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        x2 = x.reshape(-1, self.in_features).float()
        y = fx.onednn_static_linear(x2, self.x_scale, self.x_zero_point, self._packed, self.weight_scale,
                                    self._w_zero_point, self.bias, dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, x_scale={self.x_scale:.4g}, x_zero_point={self.x_zero_point}"


def _applies(model, cfg: StaticLinearInt8Config, ctx: Context) -> str | None:
    return (not_cpu(ctx, "oneDNN's INT8 matmul runs on CPUs only")
            or not_x86("wired for x86 CPUs (oneDNN VNNI/AMX INT8)")
            or no_calibration(ctx)
            or scripted(model)
            or (None if any(type(m) is nn.Linear for m in model.modules()) else "no nn.Linear layers to quantize")
            or fx.onednn_linear_missing())


@register(StaticLinearInt8Config, applies=_applies)
def apply_static_linear_int8(model, cfg: StaticLinearInt8Config, ctx: Context):
    model = eval_mode(model)
    example = ctx.example.to(ctx.device)
    float_modules = set(resolve_skip(model, cfg.skip))
    reduce_range = needs_reduce_range()
    targets = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and n not in float_modules}
    if not targets:
        raise NotApplicable("every nn.Linear is in skip", "leave some Linear layers out of skip")
    observers = {n: fx.activation_observer(cfg.observer, reduce_range) for n in targets}
    seen_calls = dict.fromkeys(targets, 0)

    def hook(name):
        def observe(module, args):
            observers[name](args[0].detach().float())
            seen_calls[name] += 1
        return observe

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
    try:
        with torch.no_grad():
            seen = calibrate(model, ctx, example, cfg.max_samples)
    finally:
        for h in handles:
            h.remove()
    holder = nn.Sequential(model)  # lets the model itself be the Linear that gets replaced
    quantized, unused = [], []
    for name, linear in targets.items():
        if not seen_calls[name]:
            unused.append(name)  # never ran on the calibration data: no range to use
            continue
        scale, zero_point = observers[name].calculate_qparams()
        holder.set_submodule(f"0.{name}" if name else "0", StaticInt8Linear(linear, float(scale), int(zero_point)))
        quantized.append(name or "(model)")
    if not quantized:
        raise NotApplicable("no nn.Linear ran during calibration", "check that the calibration inputs reach the model's Linear layers")
    ctx.details["static_linear_int8"] = {
        "quantized": quantized, "left_in_float": sorted(float_modules) + unused, "not_called_in_calibration": unused,
        "observer": cfg.observer, "calibration": seen, "reduce_range": reduce_range,
    }
    note = f"static INT8 on {len(quantized)} Linear layer(s) (oneDNN, calibrated on {seen['samples']} samples, {cfg.observer} observer)"
    if float_modules or unused:
        note += f"; left in float: {', '.join(sorted(float_modules) + unused)[:300]}"
    ctx.notes.append(note)
    return holder[0]


__all__ = ["StaticLinearInt8Config", "StaticInt8Linear"]
