"""torch.compile with Inductor and weight freezing: constant-folds weights into the graph and
lets Inductor pick prepacked oneDNN/cuBLAS kernels and fuse the pointwise ops around them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compiled import Compiled, inductor_freezing  # noqa: F401 - public here too
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
        return "compile" + {"max-autotune": "-max-autotune", "max-autotune-no-cudagraphs": "-max-autotune",
                            "reduce-overhead": "-cudagraphs"}.get(self.mode, "")


def _applies(model, cfg, ctx):
    if isinstance(model, torch.jit.ScriptModule):
        return "torch.compile cannot compile a TorchScript model"
    if isinstance(model, Compiled):
        return "the model is already compiled"
    from .fast_transformer import has_packed_encoder

    if has_packed_encoder(model) and not cfg.dynamic:
        return "the fast_transformer packed path changes token counts every call: compile it with dynamic=True (no faster on CPU in trials)"
    return None


@register(CompileConfig, applies=_applies)
def apply_compile(model, cfg: CompileConfig, ctx: Context):
    kwargs = {"backend": cfg.backend, "dynamic": cfg.dynamic}
    if cfg.mode != "default":
        kwargs["mode"] = cfg.mode
    return Compiled(model, freezing=cfg.freezing and cfg.backend == "inductor", **kwargs)
