"""AOTInductor recipes: torch.export + aoti_compile_and_package -> a .pt2 package (served by
torch._inductor.aoti_load_package, or torch::inductor::AOTIModelPackageLoader in C++)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.utils._pytree as pytree

from .. import device as dev
from .. import engines
from ..engines.aoti import compile_package
from ..engines.export import FlatOutputs
from ..errors import first_line
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
    runtime: ClassVar[str] = "aoti"
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


@register(AotiConfig, applies=_applies)
def apply_aoti(model, cfg: AotiConfig, ctx: Context):
    out_spec = engines.out_spec(model, ctx.example)  # the structure AotiModule rebuilds from a flat package
    # `static-int8+aoti`: compile ahead of time the PT2E graph that torch.compile would
    inner = model.inner if isinstance(model, Compiled) else model
    if cfg.dtype == "bf16":  # inputs cast in, outputs back to FP32, inside the package
        from .low_precision import CastIO

        inner = CastIO(inner.to(torch.bfloat16), torch.bfloat16)
    ex = ctx.example
    # outputs other than one tensor are exported as a flat tuple of tensors: the package then loads
    # without the output's classes (a ModelOutput did not deserialize in a fresh process)
    flat = not pytree.treespec_loads(out_spec["out_spec"]).is_leaf()
    if flat:
        inner = FlatOutputs(inner)
    with torch.no_grad():
        ep, shapes = engines.export_program(inner, ex)
        # Inductor compiled the PT2E INT8 graph of the Fashion CNN with a dynamic batch to wrong
        # outputs (min cosine -0.66; static: 0.99995, torch 2.13): a dynamic package is checked
        # against the graph it was compiled from, and compiled static where it disagrees.
        # torchao's x86 INT8 Inductor passes raised on a dynamic batch (a GRU's PT2E graph: "torch.Size()
        # takes an iterable of 'int'", torchao 0.18): a dynamic package that fails compiles static too.
        try:
            data, cos = compile_package(ep, cfg.freezing, (ex, ex(inner)) if shapes["dynamic"] else None)
            why = f"gave wrong outputs: min cosine {cos:.3f} to the exported graph"
        except Exception as e:  # noqa: BLE001 - retried static below; a static failure raises
            if not shapes["dynamic"]:
                raise
            cos, why = 0.0, f"failed: {type(e).__name__}: {first_line(e)[:160]}"
        if cos < 0.999:
            ep, _ = engines.torch_export(inner, ex, {})
            data, _ = compile_package(ep, cfg.freezing)
            shapes = engines.static_meta(ex, engines.dynamic_dims(ex), f"the package compiled with dynamic shapes {why}")
    ctx.notes.append("AOTInductor package (torch.export + aoti_compile_and_package, weights frozen)"
                     + (" of the PT2E INT8 graph" if isinstance(model, Compiled) else "") + f"; {shapes['serves']}")
    return engines.AotiModule({"model.pt2": data}, {**out_spec, **shapes, "threads": torch.get_num_threads(),
                                                    "torch": torch.__version__, "dtype": cfg.dtype,
                                                    "flat_outputs": flat})
