"""AOTInductor: torch.export + torch._inductor.aoti_compile_and_package -> a .pt2 package, loaded
with torch._inductor.aoti_load_package (Python) or torch::inductor::AOTIModelPackageLoader (C++).

The same Inductor kernels as torch.compile, compiled ahead of time into a shared library: a call
runs no Python (no Dynamo guards, no wrapper code), which is what may win at batch 1. The modern
successor of TorchScript's freeze + optimize_for_inference + jit.save for serving without Python
model code. Weights are frozen (Inductor's `freezing`, so convs/linears get prepacked oneDNN
weights and PT2E INT8 q/dq patterns become INT8 kernels).

Composes after steps that produce an exportable model: `static-int8+aoti` takes the PT2E converted
graph (under its torch.compile wrapper) and compiles that instead; `aoti+bf16` casts to BF16 first
(inputs cast in, outputs back to FP32, inside the package).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import device as dev
from .. import engines
from .base import Context, TechniqueConfig, register
from .compile import Compiled


@dataclass(frozen=True)
class AotiConfig(TechniqueConfig):
    name = "aoti"
    engine: ClassVar[str] = "aoti"
    dtype: str = "fp32"  # or "bf16": the whole model cast (only where BF16 is native)
    freezing: bool = True

    def __post_init__(self):
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', not {self.dtype!r}")

    def label(self) -> str:
        return "aoti" if self.dtype == "fp32" else f"aoti+{self.dtype}"


class AotiModule(engines.EngineModule):
    engine = "aoti"

    def _build(self):
        with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp:
            path = os.path.join(tmp, "model.pt2")
            with open(path, "wb") as f:
                f.write(self.file("model.pt2"))
            return torch._inductor.aoti_load_package(path)  # extracts what it needs; the file can go

    def forward(self, *args, **kwargs):
        return self._runner(*args, **kwargs)  # the package keeps the original input/output structure


def _applies(model, cfg: AotiConfig, ctx: Context):
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        return "this torch has no torch._inductor.aoti_compile_and_package"
    if ctx.device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "AOTInductor needs a C++ compiler (g++/clang++) to build the package"
    if cfg.dtype == "bf16" and not dev.supports_bf16(ctx.device):
        return "BF16 is not native on this device"
    if isinstance(model, torch.jit.ScriptModule) or isinstance(model, engines.EngineModule):
        return "needs a PyTorch model torch.export can capture (not TorchScript or another engine's)"
    from .fast_transformer import has_packed_encoder

    if has_packed_encoder(model):
        return "the fast_transformer packed path has data-dependent shapes: torch.export cannot capture it"
    return None


@register(AotiConfig, applies=_applies)
def apply_aoti(model, cfg: AotiConfig, ctx: Context):
    out_spec = engines.out_spec(model, ctx.example)  # kept for the record: the package has its own
    inner = model.inner if isinstance(model, Compiled) else model  # compile ahead of time what torch.compile would
    if cfg.dtype == "bf16":
        from .low_precision import CastIO

        inner = CastIO(inner.to(torch.bfloat16), torch.bfloat16)
    ex = ctx.example
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(inner, tuple(ex.args), dict(ex.kwargs), strict=False)
        with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp:
            path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(tmp, "model.pt2"),
                                                            inductor_configs={"freezing": cfg.freezing})
            with open(path, "rb") as f:
                data = f.read()
    ctx.notes.append("AOTInductor package (torch.export + aoti_compile_and_package, weights frozen)"
                     + (" of the PT2E INT8 graph" if isinstance(model, Compiled) else ""))
    return AotiModule({"model.pt2": data}, {**out_spec, "threads": torch.get_num_threads(),
                                            "torch": torch.__version__, "dtype": cfg.dtype})
