"""torch.compile with Inductor and weight freezing: constant-folds weights into the graph and
lets Inductor pick prepacked oneDNN/cuBLAS kernels and fuse the pointwise ops around them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Context, TechniqueConfig, register


@dataclass(frozen=True)
class CompileConfig(TechniqueConfig):
    name = "compile"
    backend: str = "inductor"
    mode: str = "default"  # or "max-autotune", "reduce-overhead" (CUDA graphs)
    freezing: bool = True
    dynamic: bool = False

    def __post_init__(self):
        if self.mode not in ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"):
            raise ValueError(f"unknown torch.compile mode {self.mode!r}")

    def label(self) -> str:
        return "compile" + ("-max-autotune" if self.mode == "max-autotune" else "")


def _applies(model, cfg, ctx):
    if isinstance(model, torch.jit.ScriptModule):
        return "torch.compile cannot compile a TorchScript model"
    return None


@register(CompileConfig, applies=_applies)
def apply_compile(model, cfg: CompileConfig, ctx: Context):
    # Options scope the Inductor settings to this compiled model; nothing global is changed.
    # torch.compile takes a mode or options, not both: spell the mode out as its options.
    if cfg.backend != "inductor":
        return torch.compile(model, backend=cfg.backend, dynamic=cfg.dynamic)
    from torch._inductor import list_mode_options

    options = dict(list_mode_options(cfg.mode, cfg.dynamic)) if cfg.mode != "default" else {}
    options["freezing"] = cfg.freezing
    return torch.compile(model, backend=cfg.backend, dynamic=cfg.dynamic, options=options)
