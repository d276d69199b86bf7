"""PT2E quantization-aware training: the QAT quantizer, prepare/convert, and fake-quantizer helpers."""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from .common import quiet
from .pt2e import weight_range

__all__ = ["x86_qat_quantizer", "prepare_qat", "convert_qat", "set_training", "fake_quantizers",
           "histogram_observer", "freeze_batchnorm"]


def x86_qat_quantizer(weight_bits: int = 8, reduce_range: bool = False):
    """X86InductorQuantizer(is_qat=True) with the PTQ scheme's dtypes and ranges: uint8 per-tensor
    activations (FakeQuantize over a moving-average min/max observer, to be seeded from PTQ's
    histogram ranges), int8 per-channel symmetric weights in [-2^(b-1), 2^(b-1)-1] (FakeQuantize
    over the current weights' per-channel min/max, as PTQ's PerChannelMinMaxObserver sees them)."""
    # torchao's FakeQuantize with explicit observers instead of the default X86 QAT config's
    # FusedMovingAvgObsFakeQuantize: in torch 2.13 / torchao 0.18 the fused op trains against
    # conv-weight scales that differ from the ones convert_pt2e computes from its observers (outputs
    # of the fake-quantized and the converted model: cosine 0.97 with 3-bit weights), so what QAT
    # learned would not be what INT8 runs. With FakeQuantize both sides use the same qparams.
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
        lo, hi = weight_range(weight_bits)
        weight = dataclasses.replace(base.weight, quant_min=lo, quant_max=hi, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=obs.MovingAveragePerChannelMinMaxObserver.with_args(averaging_constant=1.0), **eps))
        return X86InductorQuantizer().set_global(dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight))


def prepare_qat(graph_module, quantizer):
    """Annotate a graph exported in train mode and insert fake-quantize modules (conv+BN get
    torchao's QAT fusion: BN folded into the fake-quantized weight, batch statistics kept)."""
    with quiet(), _conv_bn_patterns_for_present_convs():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        return prepare_qat_pt2e(graph_module, quantizer)


def convert_qat(prepared):
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


def set_training(graph_module, training: bool):
    """train()/eval() for an exported graph: rewrites its dropout and batch-norm ops."""
    with quiet():
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        return (move_exported_model_to_train if training else move_exported_model_to_eval)(graph_module)


def fake_quantizers(model) -> list:
    """(name, module) of every fake-quantize module in a QAT-prepared graph (shared ones once)."""
    with quiet():
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)]


def histogram_observer(reduce_range: bool = False):
    """The activation observer static_int8 calibrates with (uint8, per tensor, histogram)."""
    with quiet():
        from torchao.quantization.pt2e import observer as obs

        return obs.HistogramObserver(dtype=torch.uint8, quant_min=0, quant_max=127 if reduce_range else 255,
                                     qscheme=torch.per_tensor_affine, eps=2 ** -12)


def freeze_batchnorm(graph_module) -> int:
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
