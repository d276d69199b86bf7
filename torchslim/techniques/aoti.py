"""AOTInductor recipes: torch.export + aoti_compile_and_package -> a .pt2 package (served by
torch._inductor.aoti_load_package, or torch::inductor::AOTIModelPackageLoader in C++)."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import device as dev
from .. import engines
from .base import Context, TechniqueConfig, register
from .compile import Compiled
from .static_int8 import StaticInt8Config


# The same Inductor kernels as torch.compile, compiled ahead of time into a shared library: a call
# runs no Python (no Dynamo guards, no wrapper code), which is what may win at batch 1; the modern
# successor of TorchScript's freeze + optimize_for_inference + jit.save. Weights are frozen
# (Inductor's `freezing`: prepacked oneDNN conv/linear weights, PT2E q/dq patterns become INT8 kernels).
@dataclass(frozen=True)
class AotiConfig(TechniqueConfig):
    name = "aoti"
    engine: ClassVar[str] = "aoti"
    lossy = engines.PerConfig(lambda cfg: cfg.dtype != "fp32")
    dtype: str = "fp32"  # or "bf16": the whole model cast (only where BF16 is native)
    freezing: bool = True

    def __post_init__(self):
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', not {self.dtype!r}")

    def label(self) -> str:
        return "aoti" if self.dtype == "fp32" else f"aoti+{self.dtype}"

    @classmethod
    def candidates(cls, device: torch.device) -> list[tuple[TechniqueConfig, ...]]:
        """aoti, aoti+bf16 where BF16 is native, static-int8+aoti on x86 CPUs."""
        out: list[tuple[TechniqueConfig, ...]] = [(cls(),)]
        if dev.supports_bf16(device):
            out.append((cls(dtype="bf16"),))
        if device.type == "cpu" and dev.is_x86():
            out.append((StaticInt8Config(), cls()))
        return out


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


def export_program(model: torch.nn.Module, example) -> tuple[torch.export.ExportedProgram, dict]:
    """torch.export of `model` with the batch (and a token model's sequence length) dynamic where
    the model allows it; (program, {"dynamic": [...], "serves": note})."""
    dims = engines.dynamic_dims(example)

    def export(ex, dims):
        shapes = engines.dynamic_shapes(model, ex, dims) if dims else None
        with engines.quiet():
            ep = torch.export.export(model, tuple(ex.args), dict(ex.kwargs), dynamic_shapes=shapes, strict=False)
        user = set(ep.graph_signature.user_inputs)
        vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
        return ep, [tuple(v.shape) for v in vals if isinstance(v, torch.Tensor)]

    return engines.export_with_shapes(export, example, dims)


@register(AotiConfig, applies=_applies)
def apply_aoti(model, cfg: AotiConfig, ctx: Context):
    out_spec = engines.out_spec(model, ctx.example)  # kept for the record: the package has its own
    # `static-int8+aoti`: compile ahead of time the PT2E graph that torch.compile would
    inner = model.inner if isinstance(model, Compiled) else model
    if cfg.dtype == "bf16":  # inputs cast in, outputs back to FP32, inside the package
        from .low_precision import CastIO

        inner = CastIO(inner.to(torch.bfloat16), torch.bfloat16)
    with torch.no_grad():
        ep, shapes = export_program(inner, ctx.example)
        with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp, engines.quiet():
            path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(tmp, "model.pt2"),
                                                            inductor_configs={"freezing": cfg.freezing})
            with open(path, "rb") as f:
                data = f.read()
    ctx.notes.append("AOTInductor package (torch.export + aoti_compile_and_package, weights frozen)"
                     + (" of the PT2E INT8 graph" if isinstance(model, Compiled) else "") + f"; {shapes['serves']}")
    return engines.AotiModule({"model.pt2": data}, {**out_spec, **shapes, "threads": torch.get_num_threads(),
                                                    "torch": torch.__version__, "dtype": cfg.dtype})
