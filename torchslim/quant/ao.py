"""torchao's quantize_ configs (dynamic INT8, INT8/INT4/INTx weight-only, FP8), applied in place."""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from .common import quiet, unavailable

__all__ = ["torchao_importable", "is_torchao_tensor", "int8_dynamic", "int8_weight_only", "int4_weight_only",
           "intx_weight_only", "int4_cpu_kernel_ok", "float8_dynamic", "quiet"]

# Every config below is built with set_inductor_config=False: with True, torchao's quantize_ sets
# process-wide torch._inductor.config flags (coordinate_descent_tuning, force_fuse_int_mm_with_mul,
# ...) and never restores them. On CPU none of them matters; on CUDA they are autotuning knobs.


@functools.lru_cache(maxsize=None)
def torchao_importable() -> str | None:
    """None if torchao imports cleanly, else why not (one line)."""
    try:
        with quiet():
            import torchao.quantization  # noqa: F401
    except Exception as e:  # ImportError, or a torch/torchao version mismatch failing at import
        return unavailable("torchao is not importable", e)
    return None


def is_torchao_tensor(t) -> bool:
    """True for a torchao tensor subclass (a weight that quantize_ already converted)."""
    with quiet():
        from torchao.utils import TorchAOBaseTensor

        return isinstance(t, TorchAOBaseTensor)


def int8_dynamic(model: nn.Module, filter_fn) -> nn.Module:
    """torchao dynamic INT8: per-token symmetric INT8 activations, per-channel INT8 weights (in place).
    Eager it dequantizes through slow reference ops; under torch.compile Inductor emits aten._int_mm
    (oneDNN INT8 GEMM, AMX/VNNI) with the activation quantization fused around it."""
    with quiet():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_
        from torchao.utils import should_reduce_range

        p = next(iter(model.parameters()), None)
        on_cpu = p is None or p.device.type == "cpu"
        cfg = Int8DynamicActivationInt8WeightConfig(
            granularity=PerRow(), set_inductor_config=False,
            reduce_range=should_reduce_range(torch.device("cpu")) if on_cpu else False)
        quantize_(model, cfg, filter_fn=filter_fn)
    return model


def int8_weight_only(model: nn.Module, filter_fn, group_size: int | None) -> nn.Module:
    """torchao INT8 weight-only (symmetric; per output channel, or per group of `group_size`), in place."""
    with quiet():
        from torchao.quantization import Int8WeightOnlyConfig, PerGroup, PerRow, quantize_

        gran = PerRow() if group_size is None else PerGroup(group_size)
        quantize_(model, Int8WeightOnlyConfig(granularity=gran, set_inductor_config=False), filter_fn=filter_fn)
    return model


def int4_weight_only(model: nn.Module, filter_fn, group_size: int, hqq: bool, device: torch.device) -> nn.Module:
    """torchao INT4 weight-only with a packed tinygemm layout (asymmetric, per group), in place.
    CPU: prototype Int4OpaqueTensor -> aten._weight_int4pack_mm_for_cpu (fast with BF16 activations;
    with FP32 activations the same kernel is ~25-70x slower on AMX hosts, ~6.5x on AVX2).
    CUDA: Int4TilePackedTo4dTensor -> aten._weight_int4pack_mm (BF16 only, sm80+). The weights must already be in their compute dtype and on `device`."""
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


def intx_weight_only(model: nn.Module, filter_fn, bits: int, group_size: int | None, symmetric: bool,
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
        int4_weight_only(lin, None, 32, hqq=False, device=torch.device("cpu"))
        with torch.no_grad():
            out = lin(x).float()
        return bool(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.98)
    except Exception:
        return False


def float8_dynamic(model: nn.Module, filter_fn) -> nn.Module:
    """torchao FP8 (e4m3) dynamic activations and weights, one scale per row, in place. Runs
    torch._scaled_mm (cuBLASLt FP8 GEMM) on CUDA GPUs of compute capability 8.9 or newer."""
    with quiet():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
                  filter_fn=filter_fn)
    return model
