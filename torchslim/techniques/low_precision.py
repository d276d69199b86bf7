"""BF16/FP16 inference: autocast (mixed, per-op) or a full cast of weights and activations."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import device as dev
from .base import Context, TechniqueConfig, Wrapper, has_module, register

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LowPrecisionConfig(TechniqueConfig):
    """dtype: 'bf16' or 'fp16'. mode: 'autocast' (matmuls/convs in low precision, the rest FP32)
    or 'cast' (the whole model in low precision; inputs cast in, outputs cast back to FP32)."""

    name = "low_precision"
    lossy = True
    requires = ("native_{dtype}",)
    lossy = True
    dtype: str = "bf16"
    mode: str = "cast"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.mode not in ("autocast", "cast"):
            raise ValueError(f"mode must be 'autocast' or 'cast', got {self.mode!r}")

    def label(self) -> str:
        return f"{self.dtype}-{self.mode}"


class Autocast(Wrapper):
    def __init__(self, inner, device_type: str, dtype: torch.dtype):
        super().__init__(inner)
        self.device_type, self.dtype = device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.inner(*args, **kwargs)
        return _cast_floats(out, torch.float32)


class CastIO(Wrapper):
    """Runs `inner` (already cast) on inputs cast to `dtype`, and returns FP32 outputs."""

    def __init__(self, inner, dtype: torch.dtype):
        super().__init__(inner)
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        out = self.inner(*_cast_floats(args, self.dtype), **_cast_floats(kwargs, self.dtype))
        return _cast_floats(out, torch.float32)


def _cast_floats(obj, dtype):
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_cast_floats(o, dtype) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    if isinstance(obj, dict):
        out = obj.__class__(obj) if hasattr(obj, "to_tuple") else {}
        for k, v in obj.items():
            out[k] = _cast_floats(v, dtype)
        return out
    return obj


def _applies(model, cfg: LowPrecisionConfig, ctx: Context):
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be re-typed from outside"
    # Missing BF16/FP16 units are not checked here: `requires` makes the search skip the recipe
    # (emulated low precision runs, slowly), unless the user asks for it by name.
    if not any(p.is_floating_point() for p in model.parameters()):
        return "the model has no floating-point weights"
    if (cfg.dtype, cfg.mode, ctx.device.type) == ("bf16", "autocast", "cpu") and not dev.onednn_bf16() \
            and has_module(model, nn.LSTM, nn.GRU, nn.RNN):
        # oneDNN: "could not create a primitive descriptor for the LSTM forward propagation primitive"
        return ("BF16 autocast of an LSTM/GRU/RNN: oneDNN has no BF16 RNN kernel on this CPU (needs AVX-512): "
                "try bf16-cast or dynamic-int8")
    return None


@register(LowPrecisionConfig, applies=_applies)
def apply_low_precision(model, cfg: LowPrecisionConfig, ctx: Context):
    dtype = DTYPES[cfg.dtype]
    if cfg.mode == "autocast":
        return Autocast(model, ctx.device.type, dtype)
    return CastIO(model.to(dtype), dtype)
