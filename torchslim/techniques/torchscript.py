"""TorchScript trace + freeze + optimize_for_inference: the LEGACY graph path (torch.compile succeeds
it upstream); kept because it needs no compiler toolchain at load time and some serving stacks want it."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..measure import script_module  # noqa: F401 - public here too
from ..quant import fx
from .base import Context, TechniqueConfig, register


@dataclass(frozen=True)
class TorchScriptConfig(TechniqueConfig):
    name = "torchscript"
    runtime = "torchscript"
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
    return _unnamed_kwargs(model, ctx.example)


def _unnamed_kwargs(model, example) -> str | None:
    """torch.jit.trace passes keyword inputs by the names of forward's own parameters: a forward
    taking them through **kwargs (a wrapped Hugging Face model) cannot be traced with them."""
    if not example.kwargs or isinstance(model, torch.jit.ScriptModule):
        return None
    from torch._jit_internal import get_callable_argument_names

    missing = sorted(set(example.kwargs) - set(get_callable_argument_names(model.forward)))
    if missing:
        return (f"torch.jit.trace passes keyword inputs by forward's parameter names, and forward() does not "
                f"name {', '.join(missing)} (it takes them through *args/**kwargs): give the inputs positionally")
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


class StaticRuntime(nn.Module):
    """A frozen TorchScript module run by TorchScript's Static Runtime (see quant.fx.static_runtime).

    `inner` is the ScriptModule itself: it is what gets saved (torch.jit.save; torch.jit.load and
    libtorch serve it with the standard interpreter, libtorch also has torch::jit::StaticModule).
    One runtime per module and calls hold the GIL, so concurrent Python threads take turns."""

    def __init__(self, inner: torch.jit.ScriptModule):
        super().__init__()
        self.inner = inner
        self._runtime = fx.static_runtime(inner)

    @property
    def torchscript_module(self) -> torch.jit.ScriptModule:
        """What measure.script_module saves and sizes."""
        return self.inner

    def forward(self, *args):
        return self._runtime(*args)

    def __deepcopy__(self, memo):
        return StaticRuntime(copy.deepcopy(self.inner, memo))

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_runtime", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._runtime = fx.static_runtime(self.inner)
