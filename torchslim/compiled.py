"""Modules that wrap another one (`Wrapper`), and torch.compile with Inductor's weight freezing set
for each call only (`Compiled`, `Frozen` for a converted PT2E graph): the flow under the compile and
static INT8 techniques, QAT's lowering and the generation loop."""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn


class Wrapper(nn.Module):
    """Base for modules that change how `inner` is called; state dict keys keep the 'inner.' prefix."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner


@functools.lru_cache(maxsize=None)
def inductor_freezing(on: bool = True):
    """Inductor's global freezing flag, set for the block only: torch._inductor.config.patch, built
    once per value (entering a built patch costs what a flag swap does; building one, paid on every
    call, cost ~5x that: ~50 us per model call, loaded machine). Re-entrant and per-context."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=on)


class Compiled(Wrapper):
    """`inner` under torch.compile, called with freezing on and autograd off. The compiled callable
    is not a submodule, so the state dict holds only `inner.*` (the real weights).
    quiet_warnings: messages of warnings compiling may give, silenced in the calls that compile."""

    # Freezing only happens when Inductor's *global* `freezing` flag is on while Dynamo captures the
    # graph (torch 2.13): options={"freezing": True} to torch.compile leaves the weights as graph
    # inputs and silently gives plain extern_kernels.convolution calls. So each call sets the flag
    # (and no_grad, which freezing needs) for its duration only; nothing global stays changed.

    def __init__(self, inner: torch.nn.Module, freezing: bool = True, quiet_warnings: tuple[str, ...] = (),
                 **compile_kwargs):
        super().__init__(inner)
        self.freezing = freezing
        self.quiet_warnings = tuple(quiet_warnings)
        self._quiet_seen: set = set()
        # CUDA graphs replay into the same output buffers: each call starts a new step and hands
        # back copies, so outputs a caller keeps are never overwritten by the next call.
        self.cudagraphs = compile_kwargs.get("mode") == "reduce-overhead"
        self.__dict__["_compiled"] = torch.compile(inner, **compile_kwargs)

    def train(self, mode: bool = True):
        # torch.export graphs refuse .train()/.eval(); a compiled inference model stays as it is.
        self.training = mode
        return self

    def forward(self, *args, **kwargs):
        if self.quiet_warnings:
            # Compilation happens on the first call with each input shape (static shapes recompile):
            # filter there only, so later calls pay nothing.
            key = tuple(getattr(a, "shape", None) for a in (*args, *kwargs.values()))
            if key not in self._quiet_seen:
                with warnings.catch_warnings():
                    for message in self.quiet_warnings:
                        warnings.filterwarnings("ignore", message=message)
                    out = self._call(*args, **kwargs)
                self._quiet_seen.add(key)
                return out
        return self._call(*args, **kwargs)

    def _call(self, *args, **kwargs):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if not self.freezing:
            out = self._compiled(*args, **kwargs)
        else:
            with torch.no_grad(), inductor_freezing(True):
                out = self._compiled(*args, **kwargs)
        if self.cudagraphs:
            out = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
        return out


def Frozen(inner: torch.fx.GraphModule) -> Compiled:
    """The converted PT2E graph compiled with freezing, so Dynamo embeds the int8 weights as
    constants and Inductor swaps the q/dq patterns for oneDNN INT8 kernels (see Compiled).
    The converted graph on its own is a reference model (FP32 ops between q/dq pairs, slower than
    FP32): the INT8 kernels only appear once the weights are constants of the compiled graph."""
    # Inductor's oneDNN INT8 lowering copies a tensor with torch.tensor(t) on every compile.
    return Compiled(inner, freezing=True, dynamic=False, quiet_warnings=("To copy construct from a tensor",))
