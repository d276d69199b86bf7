"""Every call into a quantization backend lives here, so upstream churn stays in one file.

- PyTorch's eager quantized kernels (`torch.ao.quantization.quantize_dynamic`, fbgemm/oneDNN):
  deprecated upstream in favour of torchao, still the fastest eager dynamic INT8 for Linear/LSTM/GRU.
- torchao (`quantize_` with configs): the maintained path; pays off under torch.compile.
- torch.ao's FX graph-mode static INT8 (deprecated upstream, still shipped in torch 2.13): eager
  quantized kernels with cached oneDNN primitives; TorchScript-frozen, it beats PT2E+Inductor on
  small CNNs where per-op overhead dominates (see techniques/static_int8_fx.py).
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch
import torch.nn as nn


@contextlib.contextmanager
def quiet():
    """Silence deprecation chatter and torchao's optional-kernel loader messages."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.ao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def quantized_engine(name: str | None):
    before = torch.backends.quantized.engine
    if name and name in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def legacy_dynamic_int8(model: nn.Module, layer_types: tuple[type, ...], per_channel: bool) -> nn.Module:
    """torch.ao's eager dynamic INT8 (weights int8, activations quantized per call), in place."""
    with quiet():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfigs = {}
        for t in layer_types:
            # Per-channel weights for Linear; the RNN kernels take per-tensor weights only.
            qconfigs[t] = per_channel_dynamic_qconfig if per_channel and t is nn.Linear else default_dynamic_qconfig
        return quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=True)


def torchao_quantize(model: nn.Module, config, filter_fn=None) -> nn.Module:
    """torchao's `quantize_` (in place)."""
    with quiet():
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=filter_fn)
    return model


def torchao_config(kind: str, **kw):
    """Build a torchao config by our name for it, so callers never import torchao themselves."""
    with quiet():
        import torchao.quantization as q

        if kind == "int8_dynamic":
            return q.Int8DynamicActivationInt8WeightConfig(**kw)
        if kind == "int8_weight_only":
            return q.Int8WeightOnlyConfig(**kw)
        if kind == "int4_weight_only":
            return q.Int4WeightOnlyConfig(**kw)
    raise ValueError(f"unknown torchao config {kind!r}")


# -- PT2E static/dynamic INT8 (torchao.quantization.pt2e, X86InductorQuantizer) -------------------

PT2E_OBSERVERS = ("minmax", "moving_average", "histogram")


def pt2e_missing() -> str | None:
    """None when torchao's PT2E X86 quantization flow can be imported, else why not."""
    try:
        with quiet():
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - missing or broken install: either way, unavailable
        return f"torchao's PT2E quantization is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def pt2e_x86_quantizer(observer: str = "histogram", per_channel: bool = True, is_dynamic: bool = False,
                       reduce_range: bool = False, float_modules: tuple[str, ...] = ()):
    """An X86InductorQuantizer: uint8 per-tensor activations (observed with `observer`, or computed
    per call when `is_dynamic`), int8 symmetric weights (per output channel, or per tensor).
    Modules named in `float_modules` (exact FQNs) are left in floating point.

    Note: importing torchao's X86 quantizer registers its Inductor fusion passes and sets
    torch._inductor.config.pre_grad_custom_pass for the whole process (torchao does that on import).
    """
    import dataclasses

    with quiet():
        from torchao.quantization.pt2e import observer as obs
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config,
        )

        base = get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic, reduce_range=reduce_range)
        eps = {"eps": 2 ** -12}  # as torchao's default config
        act, weight = base.input_activation, base.weight
        if not is_dynamic:
            ctor = {"minmax": obs.MinMaxObserver, "moving_average": obs.MovingAverageMinMaxObserver,
                    "histogram": obs.HistogramObserver}[observer]
            act = dataclasses.replace(act, observer_or_fake_quant_ctr=ctor.with_args(**eps))
        if not per_channel:
            weight = dataclasses.replace(weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                         observer_or_fake_quant_ctr=obs.MinMaxObserver.with_args(**eps))
        config = dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)
        quantizer = X86InductorQuantizer().set_global(config)
        if is_dynamic:
            # Inductor lowers dynamically quantized Linear to oneDNN qlinear, but a dynamically
            # quantized conv stays an FP32 conv between q/dq ops (slower, less exact): keep convs float.
            import torch.nn.functional as F

            for fn in (F.conv1d, F.conv2d):
                quantizer.set_function_type_qconfig(fn, None)
        for name in float_modules:
            quantizer.set_module_name_qconfig(name, None)
        return quantizer


def pt2e_prepare(graph_module, quantizer):
    """Annotate the exported graph and insert observers (returns the prepared GraphModule)."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        annotate = quantizer.annotate
        quantizer.annotate = lambda model: _floats_only(annotate(model))
        return prepare_pt2e(graph_module, quantizer)


def _floats_only(model):
    """Drop quantization annotations on integer tensors: X86InductorQuantizer annotates binary ops
    without looking at dtypes, so integer arithmetic (RoBERTa's position ids: cumsum(mask) * mask)
    got an activation observer and failed ("Expecting input to have dtype torch.float32/16/b16")."""
    def is_int(node) -> bool:
        val = getattr(node, "meta", {}).get("val")
        return isinstance(val, torch.Tensor) and not val.is_floating_point()

    for node in model.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None:
            continue
        for inp in [i for i in ann.input_qspec_map if is_int(i)]:
            del ann.input_qspec_map[inp]
        if is_int(node):
            ann.output_qspec = None
    return model


def pt2e_convert(prepared):
    """Replace observers by quantize/dequantize ops with the calibrated scales (reference
    representation: Inductor's freezing passes fuse the q/dq patterns into oneDNN INT8 kernels)."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        return convert_pt2e(prepared)


# --- torchao weight-only and dynamic INT8 (techniques/ao_dynamic.py, techniques/weight_only.py) ---
import functools  # noqa: E402  (this block only; appended after the rest of the file)
# Every config below is built with set_inductor_config=False: with True, torchao's quantize_ sets
# process-wide torch._inductor.config flags (coordinate_descent_tuning, force_fuse_int_mm_with_mul,
# ...) and never restores them. On CPU none of them matters; on CUDA they are autotuning knobs.


def torchao_importable() -> str | None:
    """None if torchao imports cleanly, else why not (one line)."""
    return _torchao_import_error()


@functools.lru_cache(maxsize=None)
def _torchao_import_error() -> str | None:
    try:
        with quiet():
            import torchao.quantization  # noqa: F401
    except Exception as e:  # ImportError, or a torch/torchao version mismatch failing at import
        return f"torchao is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def is_torchao_tensor(t) -> bool:
    """True for a torchao tensor subclass (a weight that quantize_ already converted)."""
    with quiet():
        from torchao.utils import TorchAOBaseTensor

        return isinstance(t, TorchAOBaseTensor)


def ao_int8_dynamic(model: nn.Module, filter_fn) -> nn.Module:
    """torchao dynamic INT8: per-token symmetric INT8 activations, per-channel INT8 weights (in place).
    Eager it dequantizes through slow reference ops; under torch.compile Inductor emits aten._int_mm
    (oneDNN INT8 GEMM, AMX/VNNI) with the activation quantization fused around it."""
    with quiet():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_
        from torchao.utils import should_reduce_range

        cfg = Int8DynamicActivationInt8WeightConfig(
            granularity=PerRow(), set_inductor_config=False,
            reduce_range=should_reduce_range(torch.device("cpu")) if _on_cpu(model) else False)
        quantize_(model, cfg, filter_fn=filter_fn)
    return model


def ao_int8_weight_only(model: nn.Module, filter_fn, group_size: int | None) -> nn.Module:
    """torchao INT8 weight-only (symmetric; per output channel, or per group of `group_size`), in place."""
    with quiet():
        from torchao.quantization import Int8WeightOnlyConfig, PerGroup, PerRow, quantize_

        gran = PerRow() if group_size is None else PerGroup(group_size)
        quantize_(model, Int8WeightOnlyConfig(granularity=gran, set_inductor_config=False), filter_fn=filter_fn)
    return model


def ao_int4_weight_only(model: nn.Module, filter_fn, group_size: int, hqq: bool, device: torch.device) -> nn.Module:
    """torchao INT4 weight-only with a packed tinygemm layout (asymmetric, per group), in place.
    CPU: prototype Int4OpaqueTensor -> aten._weight_int4pack_mm_for_cpu (fast with BF16 activations;
    with FP32 activations the same kernel is ~25-70x slower). CUDA: Int4TilePackedTo4dTensor -> aten._weight_int4pack_mm
    (BF16 only, sm80+). The weights must already be in their compute dtype and on `device`."""
    with quiet():
        from torchao.quantization import quantize_
        from torchao.quantization.quantize_.workflows import Int4ChooseQParamsAlgorithm, Int4PackingFormat

        algo = Int4ChooseQParamsAlgorithm.HQQ if hqq else Int4ChooseQParamsAlgorithm.TINYGEMM
        if device.type == "cpu":
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            cfg = PrototypeInt4WeightOnlyConfig(group_size=group_size, int4_choose_qparams_algorithm=algo,
                                                set_inductor_config=False)
        else:
            from torchao.quantization import Int4WeightOnlyConfig

            cfg = Int4WeightOnlyConfig(group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
                                       int4_choose_qparams_algorithm=algo, set_inductor_config=False)
        quantize_(model, cfg, filter_fn=filter_fn)
    return model


def ao_intx_weight_only(model: nn.Module, filter_fn, bits: int, group_size: int | None, symmetric: bool,
                        hqq: bool = False) -> nn.Module:
    """torchao's portable INTx weight-only (values stored one per int8 byte, dequantized per call;
    no fast kernel: under torch.compile with freezing the dequantized weight is constant-folded back
    to float). The fallback where no packed kernel fits; in place. hqq: HQQ scale-only (symmetric)."""
    with quiet():
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerAxis, PerGroup, quantize_
        from torchao.quantization.quantize_.workflows import IntxChooseQParamsAlgorithm

        cfg = IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{bits}"),
            granularity=PerAxis(0) if group_size is None else PerGroup(group_size),
            mapping_type=MappingType.SYMMETRIC if symmetric or hqq else MappingType.ASYMMETRIC,
            intx_choose_qparams_algorithm=(IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY if hqq
                                           else IntxChooseQParamsAlgorithm.AFFINE))
        quantize_(model, cfg, filter_fn=filter_fn)
    return model


@functools.lru_cache(maxsize=None)
def int4_cpu_kernel_ok() -> bool:
    """True if torchao's CPU INT4 packing and aten._weight_int4pack_mm_for_cpu run here and give
    the right answer on a small BF16 layer (tried once per process)."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        lin = nn.Linear(64, 32, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(32, 64, generator=gen))
        lin = lin.to(torch.bfloat16)
        x = torch.randn(4, 64, generator=gen).to(torch.bfloat16)
        ref = lin(x).float()
        ao_int4_weight_only(lin, None, 32, hqq=False, device=torch.device("cpu"))
        with torch.no_grad():
            out = lin(x).float()
        return bool(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.98)
    except Exception:
        return False


def _on_cpu(model: nn.Module) -> bool:
    p = next(iter(model.parameters()), None)
    return p is None or p.device.type == "cpu"
# --- end torchao weight-only and dynamic INT8 ---


def ao_float8_dynamic(model: nn.Module, filter_fn) -> nn.Module:
    """torchao FP8 (e4m3) dynamic activations and weights, one scale per row, in place. Runs
    torch._scaled_mm (cuBLASLt FP8 GEMM) on CUDA GPUs of compute capability 8.9 or newer."""
    with quiet():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
                  filter_fn=filter_fn)
    return model


# --- torch.ao eager dynamic INT8 on named modules (techniques/dynamic_int8.py) ---

def legacy_dynamic_int8_named(root: nn.Module, layers: dict[str, type], per_channel: bool) -> nn.Module:
    """torch.ao's eager dynamic INT8 on exactly the submodules named in `layers` ({name: nn.Linear /
    nn.LSTM / nn.GRU}), in place; every other module is left alone. Names are relative to `root`
    and not empty (torch.ao swaps children, never `root` itself)."""
    with quiet():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weights for Linear; the RNN kernels take per-tensor weights only.
        qconfigs = {name: per_channel_dynamic_qconfig if per_channel and t is nn.Linear else default_dynamic_qconfig
                    for name, t in layers.items()}
        return quantize_dynamic(root, qconfigs, dtype=torch.qint8, inplace=True)
# --- end torch.ao eager dynamic INT8 on named modules ---


# --- torch.ao FX graph-mode static INT8 (techniques/static_int8_fx.py) ---

def fx_static_missing() -> str | None:
    """None when torch.ao's FX graph-mode quantization (deprecated upstream) is importable, else why not."""
    try:
        with quiet():
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except Exception as e:  # noqa: BLE001 - removed or broken: either way, unavailable
        return f"this torch has no torch.ao FX graph-mode quantization ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


FX_ENGINES = ("onednn", "x86", "fbgemm")


def fx_static_engine(reduce_range: bool, requested: str = "auto") -> str | None:
    """The eager INT8 engine for FX static INT8. "auto": oneDNN with full 8-bit activations where
    the CPU has VNNI/AMX (no u8*s8 saturation), else x86 (fbgemm/oneDNN) with 7-bit activations.
    A named engine is returned only if this torch build has it."""
    engines = torch.backends.quantized.supported_engines
    if requested != "auto":
        return requested if requested in engines else None
    order = ("x86", "fbgemm", "onednn") if reduce_range else ("onednn", "x86", "fbgemm")
    return next((e for e in order if e in engines), None)


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


def fx_static_prepare(model: nn.Module, example_args: tuple, engine: str, observer: str, per_channel: bool,
                      reduce_range: bool, float_modules: tuple[str, ...] = ()):
    """prepare_fx with the engine's default mapping (fixed-qparam ops, transposed convs), our
    activation observer and weight granularity globally, and `float_modules` left in float."""
    with quiet(), quantized_engine(engine):
        from torch.ao.quantization import QConfig, get_default_qconfig_mapping
        from torch.ao.quantization import observer as obs
        from torch.ao.quantization.quantize_fx import prepare_fx

        act = _ao_observer_class(observer).with_args(dtype=torch.quint8, reduce_range=reduce_range)
        weight = obs.default_per_channel_weight_observer if per_channel else obs.default_weight_observer
        mapping = get_default_qconfig_mapping(engine).set_global(QConfig(activation=act, weight=weight))
        for name in float_modules:
            mapping.set_module_name(name, None)
        return prepare_fx(model, mapping, example_args)


def fx_static_convert(prepared: nn.Module, engine: str) -> nn.Module:
    """convert_fx: quantized modules with weights prepacked for `engine`'s kernels."""
    with quiet(), quantized_engine(engine):
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(prepared)


def fx_quantized_linear_types() -> tuple[type, ...]:
    """The quantized Linear modules convert_fx emits (plain and ReLU-fused)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    return (nnq.Linear, nniq.LinearReLU)


def fx_permute_linear_inputs(linear: nn.Module, chw: tuple[int, int, int], engine: str) -> None:
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


def fx_is_quantized_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
# --- end torch.ao FX graph-mode static INT8 ---


# --- eager static INT8 Linear on oneDNN (techniques/static_linear_int8.py) ---

def onednn_linear_missing() -> str | None:
    ops = getattr(torch.ops, "onednn", None)
    if ops is None or not all(hasattr(ops, n) for n in ("qlinear_prepack", "qlinear_pointwise")):
        return "this torch build has no oneDNN INT8 linear ops (torch.ops.onednn.qlinear_pointwise)"
    return None


def eager_activation_observer(observer: str, reduce_range: bool) -> nn.Module:
    """A torch.ao observer for uint8 per-tensor activations (histogram, minmax or moving average)."""
    with quiet():
        return _ao_observer_class(observer)(dtype=torch.quint8, reduce_range=reduce_range)


def _ao_observer_class(observer: str):
    """torch.ao's observer class for an observer name of the static configs."""
    from torch.ao.quantization import observer as obs

    return {"minmax": obs.MinMaxObserver, "moving_average": obs.MovingAverageMinMaxObserver,
            "histogram": obs.HistogramObserver}[observer]


# torch 2.13 deprecates quantized tensors (quint8 ...); the uint8 input is taken from one at once.
warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel", category=UserWarning,
                        module=r"torchslim\.backends")


def onednn_linear_prepack(weight: torch.Tensor) -> torch.Tensor:
    """Int8 [out, in] weights reordered once into oneDNN's blocked layout."""
    return torch.ops.onednn.qlinear_prepack(weight, None)


def onednn_static_linear(x: torch.Tensor, x_scale: float, x_zero_point: int, packed: torch.Tensor,
                         w_scale: torch.Tensor, w_zero_point: torch.Tensor, bias: torch.Tensor | None,
                         out_dtype: torch.dtype) -> torch.Tensor:
    """y = dequant(quant(x) @ qw.T) + bias with x's scale fixed by calibration; x is 2-D float."""
    qx = torch.quantize_per_tensor(x, x_scale, x_zero_point, torch.quint8).int_repr()
    return torch.ops.onednn.qlinear_pointwise(qx, x_scale, x_zero_point, packed, w_scale, w_zero_point, bias,
                                              1.0, 0, out_dtype, "none", [], "")
# --- end eager static INT8 Linear ---


# --- PT2E observers as switchable fake-quantizers (sensitivity.py) ---------------------------------
_QUANT_DTYPES = (torch.uint8, torch.int8, torch.quint8, torch.qint8)


def pt2e_is_observer(module: nn.Module) -> bool:
    """True for an observer that prepare_pt2e inserted and convert_pt2e would turn into quantize/dequantize."""
    with quiet():
        from torchao.quantization.pt2e.observer import ObserverBase

    return isinstance(module, ObserverBase) and getattr(module, "dtype", None) in _QUANT_DTYPES


class Pt2eFakeQuant(nn.Module):
    """What convert_pt2e makes of one observer (quantize then dequantize with its calibrated scale, or
    with a scale chosen per call for dynamic activations), as a module that can be switched off:
    with `enabled` False it passes its input through unchanged (the layer stays in float)."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        self.enabled = True
        self.qmin, self.qmax = int(observer.quant_min), int(observer.quant_max)
        self.dynamic = bool(getattr(observer, "is_dynamic", False))
        self.eps = float(getattr(observer, "eps", torch.finfo(torch.float32).eps))
        self.dtype = observer.dtype
        self.axis = None
        if not self.dynamic:
            scale, zero_point = observer.calculate_qparams()
            self.register_buffer("scale", scale.detach().float().flatten().clone())
            self.register_buffer("zero_point", zero_point.detach().flatten().to(torch.int32).clone())
            self._scalar = (float(self.scale[0]), int(self.zero_point[0]))
            if observer.qscheme in (torch.per_channel_affine, torch.per_channel_symmetric):
                self.axis = int(observer.ch_axis)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.dynamic:  # as convert_pt2e's choose_qparams.tensor -> quantize_per_tensor.tensor
            scale, zp = torch.ops.quantized_decomposed.choose_qparams.tensor(x, self.qmin, self.qmax, self.eps, self.dtype)
            return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp.to(torch.int32), self.qmin, self.qmax)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, *self._scalar, self.qmin, self.qmax)
        # Per-channel means a weight: the same tensor every call, so its quantized copy is kept.
        src = getattr(self, "_src", None)
        if src is not x or self._src_version != x._version:
            self._cached = torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)
            self._src, self._src_version = x, x._version
        return self._cached
# --- end PT2E fake-quantizers ---


# --- PT2E quantization-aware training (training/qat.py) ---
# The QAT quantizer uses torchao's FakeQuantize with explicit observers instead of the default X86
# QAT config's FusedMovingAvgObsFakeQuantize: in torch 2.13 / torchao 0.18 the fused op trains
# against conv-weight scales that differ from the ones convert_pt2e computes from its observers
# (outputs of the fake-quantized and the converted model: cosine 0.97 with 3-bit weights), so what
# QAT learned would not be what INT8 runs. With FakeQuantize both sides use the same qparams.

def pt2e_weight_range(bits: int) -> tuple[int, int]:
    """Signed symmetric range of `bits`-bit weights stored in int8: (-2^(b-1), 2^(b-1) - 1)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"weight bits must be 2..8, not {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def pt2e_x86_quantizer_bits(weight_bits: int = 8, reduce_range: bool = False):
    """static_int8's PTQ quantizer (histogram activations, per-channel weights), with the weights'
    integer range narrowed to `weight_bits` (still int8 storage, so the same INT8 kernels run it)."""
    import dataclasses

    quantizer = pt2e_x86_quantizer(observer="histogram", per_channel=True, reduce_range=reduce_range)
    if weight_bits != 8:
        lo, hi = pt2e_weight_range(weight_bits)
        cfg = quantizer.global_config
        quantizer.set_global(dataclasses.replace(cfg, weight=dataclasses.replace(cfg.weight, quant_min=lo, quant_max=hi)))
    return quantizer


def pt2e_x86_qat_quantizer(weight_bits: int = 8, reduce_range: bool = False):
    """X86InductorQuantizer(is_qat=True) with the PTQ scheme's dtypes and ranges: uint8 per-tensor
    activations (FakeQuantize over a moving-average min/max observer, to be seeded from PTQ's
    histogram ranges), int8 per-channel symmetric weights in [-2^(b-1), 2^(b-1)-1] (FakeQuantize
    over the current weights' per-channel min/max, as PTQ's PerChannelMinMaxObserver sees them)."""
    import dataclasses

    with quiet():
        from torchao.quantization.pt2e import observer as obs
        from torchao.quantization.pt2e.fake_quantize import FakeQuantize
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config,
        )

        base = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=reduce_range)
        eps = {"eps": 2 ** -12}
        act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=obs.MovingAverageMinMaxObserver, **eps))
        lo, hi = pt2e_weight_range(weight_bits)
        weight = dataclasses.replace(base.weight, quant_min=lo, quant_max=hi, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=obs.MovingAveragePerChannelMinMaxObserver.with_args(averaging_constant=1.0), **eps))
        return X86InductorQuantizer().set_global(dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight))


def pt2e_prepare_qat(graph_module, quantizer):
    """Annotate a graph exported in train mode and insert fake-quantize modules (conv+BN get
    torchao's QAT fusion: BN folded into the fake-quantized weight, batch statistics kept)."""
    with quiet(), _conv_bn_patterns_for_present_convs():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        return prepare_qat_pt2e(graph_module, quantizer)


def pt2e_convert_qat(prepared):
    """convert_pt2e for a QAT-prepared graph: folds the QAT conv+BN patterns (BN's running
    statistics into the conv weight and bias), then fake-quantize modules -> quantize/dequantize ops."""
    with quiet(), _conv_bn_patterns_for_present_convs():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        return convert_pt2e(prepared)


@contextlib.contextmanager
def _conv_bn_patterns_for_present_convs():
    """torchao 0.18 fuses (prepare) and folds (convert) QAT conv+BN by generating 12-27 pattern
    graphs with torch.export for each of conv1d, conv2d, conv_transpose1d and conv_transpose2d,
    whether or not the model has such convs: ~100 exports, minutes on 2 cores. For the block,
    skip the conv kinds the graph does not contain (their patterns cannot match anything)."""
    import torch.nn.functional as F

    with quiet():
        from torchao.quantization.pt2e import qat_utils

    aten = torch.ops.aten
    ops = {F.conv1d: {aten.conv1d.default}, F.conv2d: {aten.conv2d.default},
           F.conv_transpose1d: {aten.conv_transpose1d.default},
           F.conv_transpose2d: {aten.conv_transpose2d.input}}
    saved = {name: getattr(qat_utils, name, None) for name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")}

    def only_present(helper):
        def run(m, conv_fn, *args, **kwargs):
            targets = ops.get(conv_fn)
            if targets is not None and not any(n.op == "call_function" and n.target in targets for n in m.graph.nodes):
                return m
            return helper(m, conv_fn, *args, **kwargs)
        return run

    for name, helper in saved.items():
        if helper is not None:
            setattr(qat_utils, name, only_present(helper))
    try:
        yield
    finally:
        for name, helper in saved.items():
            if helper is not None:
                setattr(qat_utils, name, helper)


def pt2e_set_training(graph_module, training: bool):
    """train()/eval() for an exported graph: rewrites its dropout and batch-norm ops."""
    with quiet():
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        return (move_exported_model_to_train if training else move_exported_model_to_eval)(graph_module)


def pt2e_fake_quantizers(model) -> list:
    """(name, module) of every fake-quantize module in a QAT-prepared graph (shared ones once)."""
    with quiet():
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)]


def pt2e_histogram_observer(reduce_range: bool = False):
    """The activation observer static_int8 calibrates with (uint8, per tensor, histogram)."""
    with quiet():
        from torchao.quantization.pt2e import observer as obs

        return obs.HistogramObserver(dtype=torch.uint8, quant_min=0, quant_max=127 if reduce_range else 255,
                                     qscheme=torch.per_tensor_affine, eps=2 ** -12)


def pt2e_freeze_batchnorm(graph_module) -> int:
    """Make every aten.batch_norm in an exported graph use its running statistics (and stop
    updating them) while the rest stays in train mode; returns how many were switched."""
    switched = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.batch_norm.default and len(node.args) > 5 \
                and node.args[5] is True:
            args = list(node.args)
            args[5] = False
            node.args = tuple(args)
            switched += 1
    if switched:
        graph_module.recompile()
    return switched
# --- end PT2E quantization-aware training ---
