"""Static INT8 (PT2E): weights int8, activations uint8 with scales calibrated on representative
inputs, lowered by Inductor to oneDNN INT8 kernels (x86 CPUs; VNNI/AMX make it pay off).

The flow is torchao's PT2E one: torch.export -> prepare_pt2e(X86InductorQuantizer) -> run the
calibration inputs -> convert_pt2e -> torch.compile with weight freezing. The converted graph on its
own is a reference model (FP32 ops between quantize/dequantize pairs, slower than FP32); the INT8
kernels only appear when Inductor's freezing passes fuse the q/dq patterns, which needs the weights
to be constants of the compiled graph. `torch.compile(options={"freezing": True})` is not enough for
that: Dynamo decides whether to embed the weights as constants from the *global*
torch._inductor.config.freezing, so the compiled model is called with that flag set (see Frozen).

A second config, Pt2eDynamicInt8Config, uses the same quantizer with activations quantized per
call (no calibration): X86InductorQuantizer's dynamic mode covers Linear layers.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import fnmatch
import logging
import platform
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .. import backends
from .. import device as dev
from ..errors import NotApplicable, SlimError, first_line
from ..progress import bar as progress_bar
from ..inputs import Example, as_example
from .base import Context, TechniqueConfig, Wrapper, register
from ..workload import eval_mode
from .compile import Compiled

OBSERVERS = backends.PT2E_OBSERVERS
NO_CALIBRATION = ("needs calibration data: pass --calib-data (CLI), calibration= (torchslim.apply) or give the "
                  "workload a calibration function")

_WEIGHTED_OPS = {  # aten op -> the layer type it comes from
    "aten.conv1d.default": "Conv1d", "aten.conv2d.default": "Conv2d", "aten.conv3d.default": "Conv3d",
    "aten.conv_transpose2d.input": "ConvTranspose2d", "aten.linear.default": "Linear",
}
_WEIGHT_DEQUANT = ("dequantize_per_channel", "dequantize_per_tensor")


@dataclass(frozen=True)
class StaticInt8Config(TechniqueConfig):
    name = "static_int8"
    needs_calibration = True
    observer: str = "histogram"  # activation range observer: "histogram" | "minmax" | "moving_average"
    per_channel: bool = True  # weights: one scale per output channel (else one per tensor)
    max_samples: int = 256  # calibration stops once this many samples (batch rows) have been seen
    skip: tuple[str, ...] = ()  # fnmatch patterns of module names to keep in floating point

    def __post_init__(self):
        _validate(self)
        if self.observer not in OBSERVERS:
            raise ValueError(f"unknown observer {self.observer!r}: use one of {', '.join(OBSERVERS)}")
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")

    def label(self) -> str:
        return "static-int8" + ("" if self.observer == "histogram" else f"-{self.observer.replace('_', '-')}") \
            + ("" if self.per_channel else "-per-tensor") + ("-skip" if self.skip else "")


@dataclass(frozen=True)
class Pt2eDynamicInt8Config(TechniqueConfig):
    """PT2E dynamic INT8: int8 weights, activations quantized per call; no calibration."""

    name = "pt2e_dynamic_int8"
    per_channel: bool = True
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _validate(self)

    def label(self) -> str:
        return "pt2e-dynamic-int8" + ("" if self.per_channel else "-per-tensor") + ("-skip" if self.skip else "")


def _validate(cfg) -> None:
    if isinstance(cfg.skip, str) or not all(isinstance(p, str) and p for p in cfg.skip):
        raise ValueError(f"skip must be a tuple of module-name patterns, not {cfg.skip!r}")
    if not isinstance(cfg.per_channel, bool):
        raise ValueError(f"per_channel must be true or false, not {cfg.per_channel!r}")


# -- applies -----------------------------------------------------------------------------------

def _applies_common(model, cfg, ctx: Context) -> str | None:
    if ctx.device.type != "cpu":
        return "the PT2E X86InductorQuantizer flow targets x86 CPUs (oneDNN INT8 kernels); not wired for CUDA"
    if not dev.is_x86():
        return f"the X86InductorQuantizer's oneDNN INT8 kernels need an x86 CPU, not {platform.machine()}"
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be captured by torch.export"
    if isinstance(model, (torch._dynamo.eval_frame.OptimizedModule, Compiled)):
        return "the model is already torch.compile'd: quantize before compiling"
    if not cfg.per_channel:
        return ("per-tensor weights are not lowered to INT8 kernels by the X86 Inductor passes (torchao 0.18): "
                "the model would run FP32 convs/matmuls between quantize/dequantize ops; use per_channel=True")
    if not any(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) for m in model.modules()):
        return "no Linear/Conv layers to quantize"
    return backends.pt2e_missing()


def _applies_static(model, cfg: StaticInt8Config, ctx: Context) -> str | None:
    if ctx.calibration is None:
        return NO_CALIBRATION
    return _applies_common(model, cfg, ctx)


def _applies_dynamic(model, cfg: Pt2eDynamicInt8Config, ctx: Context) -> str | None:
    reason = _applies_common(model, cfg, ctx)
    if reason is None and not any(isinstance(m, nn.Linear) for m in model.modules()):
        return "PT2E dynamic INT8 covers Linear layers and this model has none"
    return reason


# -- apply -------------------------------------------------------------------------------------

@register(StaticInt8Config, applies=_applies_static)
def apply_static_int8(model, cfg: StaticInt8Config, ctx: Context):
    return _quantize(model, cfg, ctx, is_dynamic=False)


@register(Pt2eDynamicInt8Config, applies=_applies_dynamic)
def apply_pt2e_dynamic_int8(model, cfg: Pt2eDynamicInt8Config, ctx: Context):
    return _quantize(model, cfg, ctx, is_dynamic=True)


def _quantize(model: nn.Module, cfg, ctx: Context, is_dynamic: bool) -> nn.Module:
    prepared, float_modules, seen, dynamic = prepare_calibrated(model, cfg, ctx, is_dynamic)
    with torch.no_grad():
        converted = backends.pt2e_convert(prepared)
    _drop_unused_tensors(converted)
    details = _summarize(converted, float_modules)
    details.update(observer=None if is_dynamic else cfg.observer, per_channel=cfg.per_channel,
                   activations="dynamic per call" if is_dynamic else "static (calibrated)",
                   calibration=seen, dynamic_shapes=dynamic, reduce_range=_needs_reduce_range())
    ctx.details["static_int8" if not is_dynamic else "pt2e_dynamic_int8"] = details
    ctx.notes.append(_note(details))
    return Frozen(converted)


_CALIBRATED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("torchslim_calibrated", default=None)


@contextlib.contextmanager
def calibration_cache():
    """Within the block, prepare_calibrated() captures and calibrates each (model weights, config,
    calibration data, example) once and hands out copies: the search's static-int8 recipe and the
    sensitivity rankings of static-int8, static-int8-ts[-x86-sr] (simulated on the same PT2E graph)
    and pt2e-dynamic-int8 share one export and one calibration pass."""
    token = _CALIBRATED.set({})
    try:
        yield
    finally:
        _CALIBRATED.reset(token)


def _fingerprint(model: nn.Module, cfg, ctx: Context, is_dynamic: bool) -> tuple:
    """What the prepared graph depends on; the weights by name, shape and a sum (cheap, and copies
    of one model agree)."""
    with torch.no_grad():
        weights = tuple((n, tuple(t.shape), str(t.dtype), float(t.double().sum()) if t.is_floating_point() else int(t.sum()))
                        for n, t in model.state_dict().items() if isinstance(t, torch.Tensor))
    example = tuple((tuple(t.shape), str(t.dtype), float(t.double().sum())) for t in ctx.example.tensors())
    return (type(model).__qualname__, weights, example, getattr(cfg, "observer", None), cfg.per_channel, tuple(cfg.skip),
            getattr(cfg, "max_samples", None), is_dynamic, id(ctx.calibration), str(ctx.device))


def prepare_calibrated(model: nn.Module, cfg, ctx: Context, is_dynamic: bool = False):
    """The first half of the flow: export, annotate, insert observers, calibrate (static) or record
    the weight ranges (dynamic). Returns (prepared graph, module names kept in float, calibration
    counts, whether the export has dynamic shapes). sensitivity.py reads the observers from here.
    Inside calibration_cache() a repeated call returns a copy of the first one's result."""
    cache = _CALIBRATED.get()
    if cache is None:
        return _prepare_calibrated(model, cfg, ctx, is_dynamic)
    fp = _fingerprint(model, cfg, ctx, is_dynamic)
    if fp not in cache:
        result = _prepare_calibrated(model, cfg, ctx, is_dynamic)
        # The stored graph is only ever copied: convert_pt2e and the probes' switches change theirs.
        cache[fp] = (copy.deepcopy(result[0]), *result[1:])
        return result
    prepared, float_modules, seen, dynamic = cache[fp]
    return copy.deepcopy(prepared), float_modules, dict(seen, reused=True), dynamic


def _prepare_calibrated(model: nn.Module, cfg, ctx: Context, is_dynamic: bool = False):
    model = eval_mode(model)
    example = ctx.example.to(ctx.device)
    float_modules = _resolve_skip(model, cfg.skip)
    _unshare_activations(model, example)
    gm, dynamic = export(model, example)
    quantizer = backends.pt2e_x86_quantizer(
        observer=getattr(cfg, "observer", "histogram"), per_channel=cfg.per_channel, is_dynamic=is_dynamic,
        reduce_range=_needs_reduce_range(), float_modules=float_modules)
    prepared = _prepare(gm, quantizer)
    with torch.no_grad():
        if is_dynamic:
            example(prepared)  # records the weight ranges; activations are quantized per call
            seen = {"batches": 0, "samples": 0}
        else:
            seen = calibrate(prepared, ctx, example, cfg.max_samples)
    return prepared, float_modules, seen, dynamic


def _resolve_skip(model: nn.Module, patterns: tuple[str, ...]) -> tuple[str, ...]:
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for p in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise SlimError(f"skip pattern '{p}' matches no module of the model",
                            f"module names look like: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
        out += [h for h in hits if h not in out]
    return tuple(out)


def _needs_reduce_range() -> bool:
    """7-bit activations on x86 CPUs without VNNI (their u8*s8 multiply-add can saturate)."""
    flags = dev.cpu_flags()
    return bool(flags) and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Hardswish, nn.Sigmoid, nn.Tanh)


class _PerCall(nn.Module):
    """Stands in for an activation module that forward() calls `k` times: call i runs copy i % k,
    so each call gets its own module path in the exported graph."""

    def __init__(self, module: nn.Module, k: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(k))
        self.calls = 0

    def forward(self, x):
        m = self.copies[self.calls % len(self.copies)]
        self.calls += 1
        return m(x)


def _unshare_activations(model: nn.Module, example: Example) -> None:
    """ResNet's BasicBlock calls one `self.relu` twice; the X86 quantizer then sees one ReLU
    partition with two outputs and raises "Input partition has more than one output node"
    (torchao 0.18). Count calls on one example run and give every call its own copy (in place,
    on the fresh copy optimize() hands us; activations hold no weights)."""
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
             for name, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
    try:
        with torch.no_grad():
            example(model)
    finally:
        for h in hooks:
            h.remove()
    for name, k in counts.items():
        if k > 1:
            model.set_submodule(name, _PerCall(model.get_submodule(name), k))


def export(model: nn.Module, example: Example) -> tuple[torch.fx.GraphModule, bool]:
    """torch.export the model (non-strict), every dimension marked Dim.AUTO so the result is not
    tied to the example's sizes (export keeps static what the model needs static); falls back to a
    fully static export. Dead code is removed (torchao's X86 quantizer trips over a Linear+activation
    whose output nobody uses, e.g. BERT's pooler when only last_hidden_state is returned).
    Raises NotApplicable naming the first line of the export error."""
    errors = []
    for dynamic in (True, False):
        try:
            kw: dict[str, Any] = {"strict": False}
            if dynamic:
                kw["dynamic_shapes"] = _auto_shapes(model, example)
            with backends.quiet(), _quiet_export():
                ep = torch.export.export(model, tuple(example.args), dict(example.kwargs), **kw)
            gm = ep.module()
            break
        except Exception as e:  # noqa: BLE001 - any capture failure is a refusal with its reason
            errors.append(e)
    else:
        e = errors[-1]
        first = first_line(e)
        raise NotApplicable(f"torch.export cannot capture this model ({type(e).__name__}: {first[:300]})",
                            "static INT8 needs a graph capture; dynamic INT8 (eager, dynamic_int8) still applies") from e
    _eliminate_dead_code(gm)
    return gm, dynamic


@contextlib.contextmanager
def _quiet_export():
    """torch.export logs a warning for every Dim.AUTO dimension it keeps static (batch 1, ...)."""
    loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _auto_shapes(model: nn.Module, example: Example) -> torch.export.ShapesCollection:
    shapes = torch.export.ShapesCollection()
    for t in example.tensors():
        if t.dim() > 0:
            shapes[t] = tuple(torch.export.Dim.AUTO for _ in range(t.dim()))
    return shapes


def _eliminate_dead_code(gm: torch.fx.GraphModule) -> None:
    # Dead pure ops only (fx keeps placeholders, outputs and impure ops such as the export guards).
    if gm.graph.eliminate_dead_code():
        gm.recompile()


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """convert_pt2e leaves the FP32 weights on the module beside their int8 copies: drop every
    parameter/buffer the graph no longer reads, so the state dict (and the size on disk) is int8."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name in used:
            continue
        *path, leaf = name.split(".")
        owner = gm.get_submodule(".".join(path)) if path else gm
        owner._parameters.pop(leaf, None)
        owner._buffers.pop(leaf, None)
    gm.delete_all_unused_submodules()
    gm.recompile()


def _prepare(gm: torch.fx.GraphModule, quantizer):
    try:
        return backends.pt2e_prepare(gm, quantizer)
    except (IndexError, NotImplementedError, AssertionError) as e:
        where = first_line(e)
        raise SlimError(f"torchao's X86InductorQuantizer could not annotate this model's graph ({type(e).__name__}: {where[:200]})",
                        "keep the offending modules in float with skip=('name.*',), or use dynamic_int8") from e


# -- calibration -------------------------------------------------------------------------------

def calibrate(prepared: nn.Module, ctx: Context, example: Example, max_samples: int) -> dict:
    """Run calibration batches through the observed model until `max_samples` rows have been seen."""
    batches = ctx.calibration() if ctx.calibration is not None else None
    if batches is None:
        raise NotApplicable(NO_CALIBRATION)
    spec = _signature(example)
    n_batches = n_samples = 0
    total = max_samples
    if hasattr(batches, "__len__"):  # a list: the bar can show the real end
        total = min(max_samples, len(batches) * max(1, example.batch_size))
    with progress_bar(total, "calibrating", "sample") as bar:
        for batch in batches:
            batch = as_example(batch).to(ctx.device)
            _check_batch(batch, spec, example, n_batches)
            try:
                batch(prepared)
            except Exception as e:  # noqa: BLE001 - the user's data does not fit the captured graph
                first = first_line(e)
                raise SlimError(f"calibration batch {n_batches} ({batch.describe()}) does not run through the model "
                                f"captured with the example ({example.describe()}): {first[:200]}",
                                "give calibration inputs shaped like the example inputs") from e
            n_batches += 1
            n_samples += batch.batch_size
            bar.update(min(batch.batch_size, max(0, total - bar.n)))
            if n_samples >= max_samples:
                break
    if n_batches == 0:
        raise SlimError("the calibration set is empty", "give at least one calibration batch (a few hundred samples is typical)")
    return {"batches": n_batches, "samples": n_samples}


def _signature(ex: Example):
    leaves, tree = pytree.tree_flatten((tuple(ex.args), dict(ex.kwargs)))
    return tree, [(t.dim(), t.dtype) if isinstance(t, torch.Tensor) else type(t) for t in leaves]


def _check_batch(batch: Example, spec, example: Example, index: int) -> None:
    tree, kinds = spec
    leaves, btree = pytree.tree_flatten((tuple(batch.args), dict(batch.kwargs)))
    where = f"calibration batch {index}"
    if btree != tree:
        raise SlimError(f"{where} is structured differently from the example inputs: "
                        f"{_brief(btree)} vs the example's {_brief(tree)}",
                        "give calibration inputs with the same positional/keyword inputs as the example")
    ex_leaves = pytree.tree_leaves((tuple(example.args), dict(example.kwargs)))
    for i, (leaf, kind, ref) in enumerate(zip(leaves, kinds, ex_leaves)):
        if isinstance(kind, tuple):
            if not isinstance(leaf, torch.Tensor):
                raise SlimError(f"{where}: input {i} is a {type(leaf).__name__}, the example's is a tensor {tuple(ref.shape)}",
                                "give calibration inputs shaped like the example inputs")
            rank, dtype = kind
            if leaf.dim() != rank:
                raise SlimError(f"{where}: input {i} has shape {tuple(leaf.shape)} (rank {leaf.dim()}), "
                                f"the example's has shape {tuple(ref.shape)} (rank {rank})",
                                "give calibration inputs shaped like the example inputs")
            if leaf.dtype != dtype:
                raise SlimError(f"{where}: input {i} is {str(leaf.dtype).replace('torch.', '')}, "
                                f"the example's is {str(dtype).replace('torch.', '')}",
                                "give calibration inputs with the example inputs' dtypes")


def _brief(tree) -> str:
    s = str(tree).replace("\n", " ")
    return s if len(s) < 160 else s[:157] + "..."


# -- what was quantized --------------------------------------------------------------------------

def _summarize(gm: torch.fx.GraphModule, float_modules: tuple[str, ...]) -> dict:
    """Which Conv/Linear call sites got int8 weights (a dequantize op feeding their weight input)."""
    quantized: Counter = Counter()
    total: Counter = Counter()
    left: list[str] = []
    for node in gm.graph.nodes:
        kind = _WEIGHTED_OPS.get(str(node.target)) if node.op == "call_function" else None
        if kind is None or len(node.args) < 2:
            continue
        total[kind] += 1
        w = node.args[1]
        if isinstance(w, torch.fx.Node) and w.op == "call_function" and any(d in str(w.target) for d in _WEIGHT_DEQUANT):
            quantized[kind] += 1
        else:
            left.append(f"{_module_name(node) or node.name} ({kind})")
    return {"quantized": dict(quantized), "total": dict(total), "left_in_float": left, "skipped_by_config": list(float_modules)}


def weighted_layer(node: torch.fx.Node) -> tuple[str, str] | None:
    """(module name, layer type) of a Conv/Linear call in an exported graph, else None."""
    kind = _WEIGHTED_OPS.get(str(node.target)) if node.op == "call_function" else None
    if kind is None or len(node.args) < 2:
        return None
    return (_module_name(node) or node.name), kind


def _module_name(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    fqn = list(stack.values())[-1][0]
    return fqn or None


def _note(d: dict) -> str:
    parts = [f"{d['quantized'].get(k, 0)}/{n} {k}" for k, n in sorted(d["total"].items())]
    s = "quantized " + (", ".join(parts) if parts else "no Conv/Linear layers")
    if d["left_in_float"]:
        shown = d["left_in_float"][:6]
        s += "; left in float: " + ", ".join(shown) + (f" (+{len(d['left_in_float']) - 6} more)" if len(d["left_in_float"]) > 6 else "")
    if d["calibration"]["batches"]:
        s += f"; calibrated on {d['calibration']['samples']} samples ({d['observer']} observer)"
    return s


# -- the compiled model -----------------------------------------------------------------------

def Frozen(inner: torch.fx.GraphModule) -> Compiled:
    """The converted PT2E graph compiled with freezing, so Dynamo embeds the int8 weights as
    constants and Inductor swaps the q/dq patterns for oneDNN INT8 kernels (see compile.Compiled)."""
    # Inductor's oneDNN INT8 lowering copies a tensor with torch.tensor(t) on every compile.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                            module=r"torch\._inductor\.mkldnn_lowerings")
    return Compiled(inner, freezing=True, dynamic=False)


__all__ = ["StaticInt8Config", "Pt2eDynamicInt8Config", "Frozen", "calibrate", "calibration_cache", "export", "prepare_calibrated", "weighted_layer"]
