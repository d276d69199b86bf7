"""The `applies` checks the quantization techniques share: each returns None, or why not (one line)."""
from __future__ import annotations

import platform

import torch
import torch.nn as nn

from .. import device as dev
from ..calibration import NO_CALIBRATION
from ..quant import ao
from .base import Context
from .compile import Compiled

__all__ = ["NO_CALIBRATION", "not_cpu", "not_x86", "no_calibration", "scripted", "compiled", "lacks",
           "torchao_missing", "check_common"]


def not_cpu(ctx: Context, reason: str) -> str | None:
    """`reason` unless the technique runs on a CPU here."""
    return reason if ctx.device.type != "cpu" else None


def not_x86(reason: str) -> str | None:
    """`reason`, naming this machine, unless it is an x86 CPU."""
    return None if dev.is_x86() else f"{reason}, not {platform.machine()}"


def no_calibration(ctx: Context) -> str | None:
    """NO_CALIBRATION unless calibration data was given."""
    return NO_CALIBRATION if ctx.calibration is None else None


def scripted(model: nn.Module, reason: str = "a TorchScript model cannot be quantized from outside") -> str | None:
    """`reason` for a TorchScript model."""
    return reason if isinstance(model, torch.jit.ScriptModule) else None


def compiled(model: nn.Module) -> str | None:
    """Why a torch.compile'd model cannot be quantized (quantize first), else None."""
    if isinstance(model, (torch._dynamo.eval_frame.OptimizedModule, Compiled)):
        return "the model is already torch.compile'd: quantize before compiling"
    return None


def lacks(model: nn.Module, types: tuple[type, ...], reason: str) -> str | None:
    """`reason` when the model has no module of `types`."""
    return None if any(isinstance(m, types) for m in model.modules()) else reason


def torchao_missing(model: nn.Module) -> str | None:
    """What the torchao techniques share: a plain (not scripted) model with Linears, torchao importable."""
    return scripted(model) or ao.torchao_importable() or lacks(model, (nn.Linear,), "no nn.Linear layers to quantize")


def check_common(skip: tuple[str, ...], min_features: int) -> None:
    """Validate the skip / min_features options of the torchao configs (raises ValueError)."""
    if isinstance(skip, str) or not all(isinstance(p, str) for p in skip):
        raise ValueError(f"skip must be a tuple of fnmatch patterns on module names, got {skip!r}")
    if not isinstance(min_features, int) or min_features < 0:
        raise ValueError(f"min_features must be an int >= 0, got {min_features!r}")
