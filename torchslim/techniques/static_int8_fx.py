"""Static INT8 on PyTorch's eager quantized kernels, TorchScript-frozen (the small-model fast path):
torch.ao FX prepare/calibrate/convert, then torch.jit.trace + freeze (optionally Static Runtime)."""
from __future__ import annotations

from typing import ClassVar

import copy
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibration import cap
from ..errors import NotApplicable, first_line
from ..fidelity import output_tensors
from ..quant import bias_correction, fx, needs_reduce_range, quantized_engine
from ..workload import eval_mode
from .base import Context, register
from .predicates import compiled, lacks, no_calibration, not_cpu, not_x86, scripted
from .static_int8 import StaticInt8Config, calibrate, resolve_skip
from .torchscript import StaticRuntime

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# Why this exists beside static_int8 (PT2E + Inductor): on small models the PT2E path is bound by
# per-op cost, not by the INT8 math. Fashion-MNIST CNN, batch 1 (oneDNN verbose log): convs and
# matmuls take ~0.09 ms of a 0.47 ms call; Inductor's onednn::qconv_pointwise builds its primitive
# descriptor every call (~54 us per conv against ~20 us of kernel) and the Python wrapper costs the
# rest. The eager quantized ops cache their primitives (~23 us per conv) and TorchScript calls them
# from C++: 0.14 ms. On large inputs both run the same kernels and PT2E's fusions can win; optimize
# measures both. Static Runtime (static_runtime=True) removes the interpreter's per-op cost at batch 1.
# The frozen TorchScript module can also be saved with torch.jit.save and served from C++ (libtorch).
@dataclass(frozen=True)
class StaticInt8FxConfig(StaticInt8Config):
    """StaticInt8Config's options (observer, per_channel, max_samples, skip), lowered to eager INT8
    kernels and TorchScript instead of Inductor, plus:

    engine: "auto" (oneDNN on VNNI/AMX CPUs, else x86), or "onednn" | "x86" | "fbgemm". Under "x86"
        the convolutions still run on oneDNN but the Linears on fbgemm, which is faster at batch 1
        and slower at large batches (see BENCHMARKS.md).
    static_runtime: run the frozen graph with TorchScript's Static Runtime instead of its
        interpreter (less per-op overhead: the batch-1 win). It needs Linears packed by fbgemm or
        x86 (Static Runtime's quantized::linear calls an out= variant oneDNN's packing lacks)."""

    name = "static_int8_fx"
    runtime: ClassVar[str] = "torchscript"  # a frozen TorchScript module (the `engine` field is the quantized-kernel one)
    engine: str = "auto"
    static_runtime: bool = False
    # None: on models with depthwise convs only (EfficientNet, MobileNet), whose 9-25-weight filters
    # round without averaging out: quant.bias_correction on the calibration batches before
    # quantizing, and the stem conv kept in float (EfficientNet-Lite0 on held-out photographs:
    # min cosine 0.65 -> 0.96 from the ReLU6-clamped observers, see quant/fx.clamp_observers, and
    # then as listed in BENCHMARKS.md with these two).
    bias_correction: bool | None = None
    float_stem: bool | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.engine not in ("auto", *fx.ENGINES):
            raise ValueError(f"unknown engine {self.engine!r}: use auto, {', '.join(fx.ENGINES)}")
        if not isinstance(self.static_runtime, bool):
            raise ValueError(f"static_runtime must be true or false, not {self.static_runtime!r}")

    def label(self) -> str:
        return super().label().replace("static-int8", "static-int8-ts", 1) \
            + ("" if self.engine == "auto" else f"-{self.engine}") + ("-sr" if self.static_runtime else "") \
            + {None: "", True: "-bc", False: "-no-bc"}[self.bias_correction] \
            + {None: "", True: "-float-stem", False: "-int8-stem"}[self.float_stem]

    def pt2e(self) -> StaticInt8Config:
        """The PT2E config with the same quantization math (sensitivity ranks layers on it)."""
        return StaticInt8Config(observer=self.observer, per_channel=self.per_channel,
                                max_samples=self.max_samples, skip=self.skip)


def _applies(model, cfg: StaticInt8FxConfig, ctx: Context) -> str | None:
    return (not_cpu(ctx, "PyTorch's eager INT8 kernels run on CPUs only")
            or not_x86("wired for x86 CPUs (fbgemm/oneDNN INT8 kernels)")
            or no_calibration(ctx)
            or scripted(model, "a TorchScript model cannot be symbolically traced")
            or compiled(model)
            or (("FX graph-mode quantization traces positional tensor inputs only; this model takes keyword inputs")
                if ctx.example.kwargs else None)
            or lacks(model, _LAYERS, "no Linear/Conv layers to quantize")
            or _no_engine(cfg)
            or (fx.static_runtime_missing() if cfg.static_runtime else None)
            or fx.missing())


def _no_engine(cfg: StaticInt8FxConfig) -> str | None:
    if fx.engine(needs_reduce_range(), cfg.engine) is not None:
        return None
    if cfg.engine == "auto":
        return "this torch build has no fbgemm/oneDNN quantized engine"
    return f"this torch build has no '{cfg.engine}' quantized engine (it has: {', '.join(torch.backends.quantized.supported_engines)})"


@register(StaticInt8FxConfig, applies=_applies)
def apply_static_int8_fx(model, cfg: StaticInt8FxConfig, ctx: Context):
    model = eval_mode(model)
    example = ctx.example.to(ctx.device)
    float_modules = bias_correction.with_float_stem(model, example, tuple(resolve_skip(model, cfg.skip)), cfg.float_stem)
    if cfg.bias_correction or (cfg.bias_correction is None and bias_correction.has_depthwise(model)):
        model = copy.deepcopy(model)  # the caller's float model keeps its biases
        done = bias_correction.correct_biases(model, cap(ctx.calibration(), cfg.max_samples), skip=float_modules,
                                              levels=127.5, qrange=(-128, 127))
        ctx.notes.append(f"bias correction on {len(done)} layers" + (f", {len(float_modules)} kept in float" if float_modules else ""))
    reduce_range = needs_reduce_range()
    engine = fx.engine(reduce_range, cfg.engine)
    layers = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    _inline_flatten(model)
    plain = fx.plain_convs(model)  # conv subclasses ("same"-padding convs) as plain convs FX can fuse with BN
    try:
        prepared = fx.prepare(model, tuple(example.args), engine, cfg.observer, cfg.per_channel,
                              reduce_range, float_modules)
    except Exception as e:  # noqa: BLE001 - symbolic tracing refuses data-dependent control flow etc.
        raise NotApplicable(f"torch.fx symbolic tracing cannot capture this model ({_quote(e)})",
                            "use static_int8 (PT2E: torch.export handles more Python)") from e
    with torch.no_grad():
        seen = calibrate(prepared, ctx, example, cfg.max_samples)
        converted = fx.convert(prepared, engine)
    details = _summarize(converted, layers, float_modules, plain)
    details["flatten_channels_last"] = _flatten_channels_last(converted, example, engine)
    details.update(observer=cfg.observer, per_channel=cfg.per_channel, activations="static (calibrated)",
                   calibration=seen, engine=engine, reduce_range=reduce_range)
    if not sum(details["quantized"].values()):
        raise NotApplicable("FX graph-mode quantization quantized none of the model's Conv/Linear layers",
                            "use static_int8 (PT2E) or dynamic_int8")
    if cfg.static_runtime:
        details["static_runtime_kernels"] = _static_runtime_kernels(converted, example)
    scripted = _freeze(converted, example, engine)
    details["runtime"] = "static runtime" if cfg.static_runtime else "TorchScript interpreter"
    ctx.details["static_int8_fx"] = details
    ctx.notes.append(_note(details))
    return _static_runtime(scripted, example) if cfg.static_runtime else scripted


class _Flatten(nn.Module):
    """nn.Flatten as a traced-through torch.flatten call. FX quantization keeps torch.flatten on
    int8 tensors, but wraps a leaf nn.Flatten module in a dequantize/quantize pair (torch 2.13)."""

    def __init__(self, start_dim: int, end_dim: int):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return torch.flatten(x, self.start_dim, self.end_dim)


class _Hardtanh(nn.Module):
    """nn.ReLU6/nn.Hardtanh as a traced-through call: F.relu6 for (0, 6), else F.hardtanh (which
    _static_runtime_kernels can rewrite). The modules compute hardtanh, which on an INT8 tensor
    Static Runtime runs as aten::clamp.out: no quantized kernel (NotImplementedError from the
    second call on, torch 2.13); relu6 keeps its quantized kernel."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return F.relu6(x) if (self.lo, self.hi) == (0.0, 6.0) else F.hardtanh(x, self.lo, self.hi)


def _inline_flatten(model: nn.Module) -> None:
    """In place, on the fresh copy optimize() hands us (Flatten and ReLU6 hold no weights)."""
    for name, m in list(model.named_modules()):
        if type(m) is nn.Flatten and name:
            model.set_submodule(name, _Flatten(m.start_dim, m.end_dim))
        elif name and type(m) in (nn.ReLU6, nn.Hardtanh):
            model.set_submodule(name, _Hardtanh(float(m.min_val), float(m.max_val)))


def _flatten_channels_last(gm: torch.fx.GraphModule, example, engine: str) -> int:
    """Flatten quantized conv activations in their memory order. The INT8 convs and pools keep
    activations channels-last, so torch.flatten(x, 1) into a quantized Linear copies them into NCHW
    order (~4 us of a ~120 us call at batch 1). Flattening x.permute(0, 2, 3, 1) is a view instead,
    and the Linear's weight columns are permuted to match: the same integer dot products, so the
    same outputs bit for bit. Returns how many flattens were rewritten."""
    from torch.fx.passes.shape_prop import ShapeProp

    linears = fx.quantized_linear_types()
    mods = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    todo = []
    for n in gm.graph.nodes:
        if not (n.op == "call_function" and n.target is torch.flatten and len(n.users) == 1):
            continue
        (user,) = n.users
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
        if (start, end) != (1, -1) or user.op != "call_module" or calls[user.target] != 1 \
                or user.args[:1] != (n,) or type(mods.get(user.target)) not in linears:
            continue
        todo.append((n, mods[user.target]))
    if not todo:
        return 0
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example.args)
    except Exception:  # noqa: BLE001 - only a speed-up: without shapes, leave the flatten as it is
        return 0
    done = 0
    for n, linear in todo:
        src = n.args[0] if n.args else n.kwargs["input"]
        meta = src.meta.get("tensor_meta") if isinstance(src, torch.fx.Node) else None
        if meta is None or len(meta.shape) != 4 or meta.dtype not in (torch.quint8, torch.qint8):
            continue
        _, c, h, w = meta.shape
        if linear.in_features != c * h * w:
            continue
        with gm.graph.inserting_before(n):
            permuted = gm.graph.call_method("permute", (src, 0, 2, 3, 1))
        n.args, n.kwargs = (permuted, 1), {}
        fx.permute_linear_inputs(linear, (c, h, w), engine)
        done += 1
    gm.recompile()
    return done


def _static_runtime_kernels(gm: torch.fx.GraphModule, example) -> int:
    """Static Runtime runs sigmoid and clamp/hardtanh through their out= variants, which have no
    INT8 kernel ('aten::clamp.out', '"sigmoid_cpu" not implemented for QUInt8': an SE block or a
    clamp on a quantized tensor). The quantized:: ops compute the same (sigmoid at its fixed 1/256
    scale) and Static Runtime runs them as they are. Returns how many calls were rewritten."""
    from torch.fx.passes.shape_prop import ShapeProp

    def kind(n):
        if n.op == "call_function":
            return {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.clamp: "clamp", F.hardtanh: "hardtanh"}.get(n.target)
        return n.target if n.op == "call_method" and n.target in ("sigmoid", "clamp") else None

    todo = [n for n in gm.graph.nodes if kind(n)]
    if not todo:
        return 0
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example.args)
    except Exception:  # noqa: BLE001 - without dtypes, leave them: the Static Runtime check decides
        return 0
    done = 0
    for n in todo:
        src = n.args[0] if n.args else n.kwargs.get("input")
        meta = src.meta.get("tensor_meta") if isinstance(src, torch.fx.Node) else None
        if meta is None or meta.dtype != torch.quint8:
            continue
        if kind(n) == "sigmoid":
            n.target, n.args, n.kwargs = torch.ops.quantized.sigmoid, (src, 1.0 / 256, 0), {}
        else:
            names = ("min_val", "max_val") if kind(n) == "hardtanh" else ("min", "max")
            lo, hi = ((-1.0, 1.0) if kind(n) == "hardtanh" else (None, None))
            lo = n.args[1] if len(n.args) > 1 else n.kwargs.get(names[0], lo)
            hi = n.args[2] if len(n.args) > 2 else n.kwargs.get(names[1], hi)
            n.target, n.args, n.kwargs = torch.ops.quantized.clamp, (src, lo, hi), {}
        n.op = "call_function"
        done += 1
    gm.recompile()
    return done


def _freeze(converted: nn.Module, example, engine: str) -> torch.jit.ScriptModule:
    """Trace the converted model and freeze it: weights become constants, no Python per call."""
    try:
        with torch.no_grad(), warnings.catch_warnings(), quantized_engine(engine):
            warnings.simplefilter("ignore")  # tracer warnings about frozen Python-side shape checks
            return torch.jit.freeze(torch.jit.trace(converted, tuple(example.args), check_trace=False, strict=False).eval())
    except Exception as e:  # noqa: BLE001
        raise NotApplicable(f"TorchScript cannot trace the quantized model ({_quote(e)})",
                            "use static_int8 (PT2E + Inductor)") from e


def _static_runtime(scripted: torch.jit.ScriptModule, example) -> StaticRuntime:
    """Wrap in Static Runtime, and check on the example that it runs and gives the interpreter's
    outputs bit for bit (it runs the same kernels). Twice: the first call allocates each output,
    later calls run the ops' out= variants into planned buffers, which some quantized ops lack."""
    try:
        wrapped = StaticRuntime(scripted)
        with torch.no_grad():
            wrapped(*example.args)
            got, want = wrapped(*example.args), scripted(*example.args)
    except Exception as e:  # noqa: BLE001
        hint = ("pack the Linears for fbgemm: engine='x86'" if "apply_out" in str(e)
                else "use the TorchScript interpreter: static_runtime=False")
        raise NotApplicable(f"TorchScript's Static Runtime cannot run this model ({_quote(e)})", hint) from e
    pairs = list(zip(output_tensors(got), output_tensors(want)))
    if not pairs or not all(torch.equal(a, b) for a, b in pairs):
        raise NotApplicable("Static Runtime's outputs differ from the TorchScript interpreter's on the example",
                            "use the TorchScript interpreter: static_runtime=False")
    return wrapped


def _summarize(converted: nn.Module, layers: dict[str, str], float_modules: tuple[str, ...],
               plain: dict[str, str]) -> dict:
    """Which Conv/Linear layers became quantized modules. FX fuses Conv-BN-ReLU into the conv's
    name, so a layer counts as quantized when its name (or its plain conv's, fx.plain_convs) is now
    a quantized module."""
    mods = dict(converted.named_modules())
    quantized: Counter = Counter()
    left = []
    for name, kind in layers.items():
        name = plain.get(name, name)
        if name in mods and fx.is_quantized_module(mods[name]):
            quantized[kind] += 1
        else:
            left.append(f"{name} ({kind})")
    return {"quantized": dict(quantized), "total": dict(Counter(layers.values())), "left_in_float": left,
            "skipped_by_config": list(float_modules), "plain_convs": len(plain)}


def _note(d: dict) -> str:
    parts = [f"{d['quantized'].get(k, 0)}/{n} {k}" for k, n in sorted(d["total"].items())]
    s = "quantized " + ", ".join(parts) + f" on {d['engine']} eager INT8 kernels (torch.ao FX, TorchScript-frozen, " \
        f"{d['runtime']}; legacy upstream)"
    if d["left_in_float"]:
        s += "; left in float: " + ", ".join(d["left_in_float"][:6]) + (" ..." if len(d["left_in_float"]) > 6 else "")
    return s + f"; calibrated on {d['calibration']['samples']} samples ({d['observer']} observer)"


def _quote(e: Exception) -> str:
    return f"{type(e).__name__}: {first_line(e)[:300]}"


__all__ = ["StaticInt8FxConfig"]
