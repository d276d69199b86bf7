"""TorchScript trace + freeze + optimize_for_inference: the LEGACY graph path.

TorchScript is in maintenance mode upstream; torch.compile (compile.py) is its successor. It is
kept because it needs no compiler toolchain at load time and some serving stacks still want it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .base import Context, TechniqueConfig, register


@dataclass(frozen=True)
class TorchScriptConfig(TechniqueConfig):
    name = "torchscript"
    freeze: bool = True
    optimize_for_inference: bool = True

    def label(self) -> str:
        return "torchscript-freeze" if self.freeze else "torchscript"


def _applies(model, cfg, ctx):
    if not hasattr(torch.jit, "trace"):
        return "this torch no longer ships TorchScript"
    if cfg.optimize_for_inference and not hasattr(torch.jit, "optimize_for_inference"):
        return "this torch no longer ships torch.jit.optimize_for_inference"
    from .fast_transformer import has_packed_encoder

    if has_packed_encoder(model):
        return "tracing cannot capture the fast_transformer packed path (its shapes depend on the mask)"
    return None


@register(TorchScriptConfig, applies=_applies)
def apply_torchscript(model, cfg: TorchScriptConfig, ctx: Context):
    ctx.notes.append("TorchScript is legacy upstream; prefer torch.compile where it is as fast")
    ex = ctx.example
    # Tracing warns about every Python-side shape check it freezes; the outputs are validated anyway.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            scripted = model
        elif ex.kwargs:
            scripted = torch.jit.trace(model, example_kwarg_inputs=ex.kwargs, check_trace=False, strict=False)
        else:
            scripted = torch.jit.trace(model, ex.args, check_trace=False, strict=False)
        scripted = scripted.eval()
        if cfg.freeze:
            scripted = torch.jit.freeze(scripted)
        if cfg.optimize_for_inference:
            scripted = torch.jit.optimize_for_inference(scripted)
    return scripted
