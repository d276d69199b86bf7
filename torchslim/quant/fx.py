"""PyTorch's eager INT8 kernels: torch.ao's FX graph-mode static flow (deprecated upstream, still
shipped by torch 2.13), TorchScript's Static Runtime, and oneDNN's static INT8 linear op."""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .common import observer_class, quantized_engine, quiet, unavailable

__all__ = ["ENGINES", "missing", "engine", "prepare", "convert", "static_runtime_missing", "static_runtime",
           "quantized_linear_types", "is_quantized_module", "permute_linear_inputs", "onednn_linear_missing",
           "activation_observer", "onednn_linear_prepack", "onednn_static_linear", "plain_convs"]

ENGINES = ("onednn", "x86", "fbgemm")


def missing() -> str | None:
    """None when torch.ao's FX graph-mode quantization (deprecated upstream) is importable, else why not."""
    try:
        with quiet():
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except Exception as e:  # noqa: BLE001 - removed or broken: either way, unavailable
        return unavailable("this torch has no torch.ao FX graph-mode quantization", e)
    return None


def engine(reduce_range: bool, requested: str = "auto") -> str | None:
    """The eager INT8 engine for FX static INT8. "auto": oneDNN with full 8-bit activations where
    the CPU has VNNI/AMX (no u8*s8 saturation), else x86 (fbgemm/oneDNN) with 7-bit activations.
    A named engine is returned only if this torch build has it."""
    engines = torch.backends.quantized.supported_engines
    if requested != "auto":
        return requested if requested in engines else None
    order = ("x86", "fbgemm", "onednn") if reduce_range else ("onednn", "x86", "fbgemm")
    return next((e for e in order if e in engines), None)


def prepare(model: nn.Module, example_args: tuple, engine: str, observer: str, per_channel: bool,
            reduce_range: bool, float_modules: tuple[str, ...] = ()):
    """prepare_fx with the engine's default mapping (fixed-qparam ops, transposed convs), our
    activation observer and weight granularity globally, and `float_modules` left in float."""
    with quiet(), quantized_engine(engine):
        from torch.ao.quantization import QConfig, get_default_qconfig_mapping
        from torch.ao.quantization import observer as obs
        from torch.ao.quantization.quantize_fx import prepare_fx

        act = observer_class(obs, observer).with_args(dtype=torch.quint8, reduce_range=reduce_range)
        weight = obs.default_per_channel_weight_observer if per_channel else obs.default_weight_observer
        mapping = get_default_qconfig_mapping(engine).set_global(QConfig(activation=act, weight=weight))
        for name in float_modules:
            mapping.set_module_name(name, None)
        prepared = prepare_fx(model, mapping, example_args)
    clamp_observers(prepared)
    return prepared


def _bounds(node, gm) -> tuple[float, float] | None:
    """(lo, hi) of a ReLU6 / hardtanh / clamp node with constant bounds, else None."""
    import torch.nn.functional as F

    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return (float(m.min_val), float(m.max_val)) if isinstance(m, nn.Hardtanh) else None  # ReLU6 is a Hardtanh
    if node.op == "call_function" and node.target in (F.relu6, F.hardtanh, torch.clamp, torch.clip):
        if node.target is F.relu6:
            return 0.0, 6.0
        lo = node.kwargs.get("min", node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0))
        hi = node.kwargs.get("max", node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0))
        return (float(lo), float(hi)) if all(isinstance(v, (int, float)) for v in (lo, hi)) else None
    return None


def clamp_observers(prepared: torch.fx.GraphModule) -> int:
    """In place: an observer whose only user is a ReLU6/hardtanh/clamp with constant bounds records
    the clamped values. The conv before it then gets an output scale over [lo, hi] instead of its
    pre-clamp range (hundreds on pretrained depthwise CNNs: EfficientNet-Lite0's INT8 fell to min
    cosine 0.65), and saturating to that range is the clamp itself. Returns how many were clamped."""
    from torch.ao.quantization.observer import ObserverBase

    n = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(obs := prepared.get_submodule(node.target), ObserverBase):
            continue
        users = list(node.users)
        if len(users) != 1 or (b := _bounds(users[0], prepared)) is None or b[0] >= b[1]:
            continue
        obs.forward = _clamped(obs.forward, *b)
        n += 1
    return n


def _clamped(observe, lo: float, hi: float):
    def forward(x):
        observe(x.detach().clamp(lo, hi))
        return x
    return forward


def plain_convs(model: nn.Module) -> dict[str, str]:
    """In place: each subclass of nn.Conv1d/2d/3d whose forward is a single conv call on its own
    weight (after padding, say: TensorFlow-style "same" convs such as efficientnet_pytorch's
    Conv2dStaticSamePadding or timm's Conv2dSame) becomes its traced forward calling a plain
    nn.ConvNd that shares the weight. FX quantization matches module types exactly: it traces
    through a subclass to a functional conv, which it neither fuses with the BatchNorm after it nor
    reports as a quantized layer, so every depthwise conv's pre-BatchNorm output was quantized per
    tensor (EfficientNet-Lite0: min cosine 0.97 on held-out photographs). Returns {layer name: the
    plain conv's name} for the layers rewritten; anything else is left as it is."""
    import torch.nn.functional as F

    functional = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
    done = {}
    for name, m in list(model.named_modules()):
        base = next((b for b in functional if isinstance(m, b)), None)
        if not name or base is None or type(m) is base or m.padding_mode != "zeros":
            continue
        try:
            gm = torch.fx.symbolic_trace(m)
        except Exception:  # noqa: BLE001 - data-dependent Python: FX quantization will say so itself
            continue
        calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is functional[base]]
        args = _conv_args(calls[0]) if len(calls) == 1 else None
        if args is None or not _own_conv(args, m) or any(n.op == "call_module" and n.target == "conv" for n in gm.graph.nodes):
            continue
        plain = base(m.in_channels, m.out_channels, m.kernel_size, stride=args["stride"], padding=args["padding"],
                     dilation=args["dilation"], groups=m.groups, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        gm.add_submodule("conv", plain)
        with gm.graph.inserting_before(calls[0]):
            new = gm.graph.call_module("conv", (args["input"],))
        calls[0].replace_all_uses_with(new)
        gm.graph.erase_node(calls[0])
        gm.graph.eliminate_dead_code()
        for attr in ("weight", "bias"):
            if attr in gm._parameters and not any(n.op == "get_attr" and n.target == attr for n in gm.graph.nodes):
                delattr(gm, attr)
        gm.recompile()
        gm.train(m.training)
        model.set_submodule(name, gm)
        done[name] = f"{name}.conv"
    return done


_CONV_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _conv_args(call) -> dict | None:
    if len(call.args) > len(_CONV_PARAMS) or set(call.kwargs) - set(_CONV_PARAMS):
        return None
    args = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, **dict(zip(_CONV_PARAMS, call.args)), **call.kwargs}
    return args if "input" in args and "weight" in args else None


def _own_conv(args: dict, m: nn.Module) -> bool:
    """The call uses the module's own weight, bias, dilation and groups, and constant stride/padding."""
    def attr(node, name):
        return isinstance(node, torch.fx.Node) and node.op == "get_attr" and node.target == name

    def same(v, want):
        return (tuple(v) if isinstance(v, (list, tuple)) else (v,) * len(want)) == tuple(want)

    consts = all(not isinstance(args[k], torch.fx.Node) for k in ("stride", "padding", "dilation", "groups"))
    return (consts and attr(args["weight"], "weight") and (attr(args["bias"], "bias") if m.bias is not None else args["bias"] is None)
            and same(args["dilation"], m.dilation) and args["groups"] == m.groups and not isinstance(args["padding"], str))


def convert(prepared: nn.Module, engine: str) -> nn.Module:
    """convert_fx: quantized modules with weights prepacked for `engine`'s kernels."""
    with quiet(), quantized_engine(engine):
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(prepared)


def quantized_linear_types() -> tuple[type, ...]:
    """The quantized Linear modules convert_fx emits (plain and ReLU-fused)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    return (nnq.Linear, nniq.LinearReLU)


def is_quantized_module(module: nn.Module) -> bool:
    """True for a module convert_fx made (torch.ao.nn.quantized / intrinsic.quantized)."""
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))


def permute_linear_inputs(linear: nn.Module, chw: tuple[int, int, int], engine: str) -> None:
    """Reorder a quantized Linear's input columns from (C, H, W) to (H, W, C) order, in place,
    repacking the int8 weight for `engine` with its scales unchanged (they are per output row)."""
    c, h, w = chw
    weight = linear.weight()
    rows = weight.int_repr().reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        new = torch._make_per_channel_quantized_tensor(rows, weight.q_per_channel_scales(),
                                                       weight.q_per_channel_zero_points(), weight.q_per_channel_axis())
    else:
        new = torch._make_per_tensor_quantized_tensor(rows, weight.q_scale(), weight.q_zero_point())
    with quantized_engine(engine):
        linear.set_weight_bias(new, linear.bias())


# -- TorchScript's Static Runtime ------------------------------------------------------------------

def static_runtime_missing() -> str | None:
    """None when this torch ships TorchScript's Static Runtime (torch._C.StaticModule), else why not."""
    if not hasattr(torch._C, "_jit_to_static_module"):
        return "this torch build has no TorchScript Static Runtime"
    return None


def static_runtime(scripted: torch.jit.ScriptModule):
    """TorchScript's Static Runtime over a frozen module: the graph is run by a flat list of op
    calls with planned intermediate buffers, no interpreter frames or guards. Callable as
    module(*args) -> the module's outputs (dicts and tuples kept)."""
    return torch._C._jit_to_static_module(scripted._c)


# -- eager static INT8 Linear on oneDNN (techniques/static_linear_int8.py) -------------------------

def onednn_linear_missing() -> str | None:
    """None when this torch has oneDNN's INT8 linear ops, else why not."""
    ops = getattr(torch.ops, "onednn", None)
    if ops is None or not all(hasattr(ops, n) for n in ("qlinear_prepack", "qlinear_pointwise")):
        return "this torch build has no oneDNN INT8 linear ops (torch.ops.onednn.qlinear_pointwise)"
    return None


def activation_observer(observer: str, reduce_range: bool) -> nn.Module:
    """A torch.ao observer for uint8 per-tensor activations (histogram, minmax or moving average)."""
    with quiet():
        from torch.ao.quantization import observer as obs

        return observer_class(obs, observer)(dtype=torch.quint8, reduce_range=reduce_range)


def onednn_linear_prepack(weight: torch.Tensor) -> torch.Tensor:
    """Int8 [out, in] weights reordered once into oneDNN's blocked layout."""
    # torch 2.13 deprecates quantized tensors (quint8 ...) with a warning it gives once per process;
    # onednn_static_linear takes its uint8 input from one, so that warning is spent here, silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel",
                                category=UserWarning)
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
    return torch.ops.onednn.qlinear_prepack(weight, None)


def onednn_static_linear(x: torch.Tensor, x_scale: float, x_zero_point: int, packed: torch.Tensor,
                         w_scale: torch.Tensor, w_zero_point: torch.Tensor, bias: torch.Tensor | None,
                         out_dtype: torch.dtype) -> torch.Tensor:
    """y = dequant(quant(x) @ qw.T) + bias with x's scale fixed by calibration; x is 2-D float."""
    qx = torch.quantize_per_tensor(x, x_scale, x_zero_point, torch.quint8).int_repr()
    return torch.ops.onednn.qlinear_pointwise(qx, x_scale, x_zero_point, packed, w_scale, w_zero_point, bias,
                                              1.0, 0, out_dtype, "none", [], "")
