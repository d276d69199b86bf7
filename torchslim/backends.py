"""Every call into a quantization backend lives here, so upstream churn stays in one file.

- PyTorch's eager quantized kernels (`torch.ao.quantization.quantize_dynamic`, fbgemm/oneDNN):
  deprecated upstream in favour of torchao, still the fastest eager dynamic INT8 for Linear/LSTM/GRU.
- torchao (`quantize_` with configs): the maintained path; pays off under torch.compile.
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

        return prepare_pt2e(graph_module, quantizer)


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
