"""torchao's PT2E flow for x86: export -> prepare (X86InductorQuantizer) -> calibrate -> convert,
and the graph helpers static_int8, QAT, sensitivity and drift share."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from typing import Any, Iterable

import torch
import torch.nn as nn

from ..calibration import check_batch
from ..errors import NotApplicable, SlimError, first_line
from ..inputs import Example, as_example
from ..progress import bar as progress_bar
from .common import OBSERVERS, observer_class, quiet, unavailable

__all__ = ["OBSERVERS", "missing", "x86_quantizer", "weight_range", "export", "prepare", "calibrate", "convert",
           "auto_shapes", "drop_unused_tensors", "unshare_activations", "summarize", "weighted_layer"]

WEIGHTED_OPS = {  # aten op -> the layer type it comes from
    "aten.conv1d.default": "Conv1d", "aten.conv2d.default": "Conv2d", "aten.conv3d.default": "Conv3d",
    "aten.conv_transpose2d.input": "ConvTranspose2d", "aten.linear.default": "Linear",
}
_WEIGHT_DEQUANT = ("dequantize_per_channel", "dequantize_per_tensor")
_EPS = {"eps": 2 ** -12}  # as torchao's default x86 config


def missing() -> str | None:
    """None when torchao's PT2E X86 quantization flow can be imported, else why not."""
    try:
        with quiet():
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - missing or broken install: either way, unavailable
        return unavailable("torchao's PT2E quantization is not importable", e)
    return None


def weight_range(bits: int) -> tuple[int, int]:
    """Signed symmetric range of `bits`-bit weights stored in int8: (-2^(b-1), 2^(b-1) - 1)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"weight bits must be 2..8, not {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def x86_quantizer(observer: str = "histogram", per_channel: bool = True, is_dynamic: bool = False,
                  reduce_range: bool = False, float_modules: tuple[str, ...] = (), weight_bits: int = 8):
    """An X86InductorQuantizer: uint8 per-tensor activations (observed with `observer`, or computed
    per call when `is_dynamic`), int8 symmetric weights (per output channel, or per tensor) in the
    range of `weight_bits` (still int8 storage, so the same INT8 kernels run it). Modules named in
    `float_modules` (exact FQNs) are left in floating point.

    Note: importing torchao's X86 quantizer registers its Inductor fusion passes and sets
    torch._inductor.config.pre_grad_custom_pass for the whole process (torchao does that on import).
    """
    with quiet():
        from torchao.quantization.pt2e import observer as obs
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config,
        )

        base = get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic, reduce_range=reduce_range)
        act, weight = base.input_activation, base.weight
        if not is_dynamic:
            act = dataclasses.replace(act, observer_or_fake_quant_ctr=observer_class(obs, observer).with_args(**_EPS))
        if not per_channel:
            weight = dataclasses.replace(weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                         observer_or_fake_quant_ctr=obs.MinMaxObserver.with_args(**_EPS))
        if weight_bits != 8:
            lo, hi = weight_range(weight_bits)
            weight = dataclasses.replace(weight, quant_min=lo, quant_max=hi)
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


# -- export ---------------------------------------------------------------------------------------

def export(model: nn.Module, example: Example) -> tuple[torch.fx.GraphModule, bool]:
    """torch.export the model (non-strict), every dimension marked Dim.AUTO so the result is not
    tied to the example's sizes (export keeps static what the model needs static); falls back to a
    fully static export. Dead code is removed (torchao's X86 quantizer trips over a Linear+activation
    whose output nobody uses, e.g. BERT's pooler when only last_hidden_state is returned).
    Returns (graph, whether its shapes are dynamic); raises NotApplicable naming the export error."""
    errors = []
    for dynamic in (True, False):
        try:
            kw: dict[str, Any] = {"strict": False}
            ex = example
            if dynamic:
                ex = example.for_export()
                kw["dynamic_shapes"] = auto_shapes(model, ex)
            with quiet(export=True):
                ep = torch.export.export(model, tuple(ex.args), dict(ex.kwargs), **kw)
            gm = ep.module()
            break
        except Exception as e:  # noqa: BLE001 - any capture failure is a refusal with its reason
            errors.append(e)
    else:
        e = errors[-1]
        raise NotApplicable(f"torch.export cannot capture this model ({type(e).__name__}: {first_line(e)[:300]})",
                            "static INT8 needs a graph capture; dynamic INT8 (eager, dynamic_int8) still applies") from e
    # Dead pure ops only (fx keeps placeholders, outputs and impure ops such as the export guards).
    if gm.graph.eliminate_dead_code():
        gm.recompile()
    return gm, dynamic


def auto_shapes(model: nn.Module, example: Example) -> torch.export.ShapesCollection:
    """Dim.AUTO for every dimension of every example tensor (torch.export's dynamic_shapes)."""
    shapes = torch.export.ShapesCollection()
    for t in example.tensors():
        if t.dim() > 0:
            shapes[t] = tuple(torch.export.Dim.AUTO for _ in range(t.dim()))
    return shapes


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Hardswish, nn.Sigmoid, nn.Tanh)


class PerCall(nn.Module):
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


def unshare_activations(model: nn.Module, example: Example) -> None:
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
            model.set_submodule(name, PerCall(model.get_submodule(name), k))


# -- prepare, calibrate, convert -------------------------------------------------------------------

def prepare(graph_module, quantizer):
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


def calibrate(prepared, batches: Iterable, example: Example, max_samples: float = math.inf,
              device: torch.device | None = None, progress: bool = True) -> dict:
    """Run calibration batches through an observed model until `max_samples` rows have been seen;
    each batch is checked against `example` first. Returns {"batches": n, "samples": n}."""
    n_batches = n_samples = 0
    total = max_samples
    if hasattr(batches, "__len__"):  # a list: the bar can show the real end
        total = min(max_samples, len(batches) * max(1, example.batch_size))
    with progress_bar(total if math.isfinite(total) else None, "calibrating", "sample", progress) as bar:
        for batch in batches:
            batch = as_example(batch)
            batch = batch.to(device) if device is not None else batch
            check_batch(batch, example, n_batches)
            try:
                batch(prepared)
            except Exception as e:  # noqa: BLE001 - the user's data does not fit the captured graph
                raise SlimError(f"calibration batch {n_batches} ({batch.describe()}) does not run through the model "
                                f"captured with the example ({example.describe()}): {first_line(e)[:200]}",
                                "give calibration inputs shaped like the example inputs") from e
            n_batches += 1
            n_samples += batch.batch_size
            if bar.total is not None:
                bar.update(min(batch.batch_size, max(0, bar.total - bar.n)))
            if n_samples >= max_samples:
                break
    if n_batches == 0:
        raise SlimError("the calibration set is empty", "give at least one calibration batch (a few hundred samples is typical)")
    return {"batches": n_batches, "samples": n_samples}



def convert(prepared):
    """Replace observers by quantize/dequantize ops with the calibrated scales (reference
    representation: Inductor's freezing passes fuse the q/dq patterns into oneDNN INT8 kernels)."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        return convert_pt2e(prepared)


def drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
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


# -- what was quantized ------------------------------------------------------------------------------

def summarize(gm: torch.fx.GraphModule, float_modules: tuple[str, ...] = ()) -> dict:
    """Which Conv/Linear call sites got int8 weights (a dequantize op feeding their weight input)."""
    quantized: Counter = Counter()
    total: Counter = Counter()
    left: list[str] = []
    for node in gm.graph.nodes:
        layer = weighted_layer(node)
        if layer is None:
            continue
        total[layer[1]] += 1
        w = node.args[1]
        if isinstance(w, torch.fx.Node) and w.op == "call_function" and any(d in str(w.target) for d in _WEIGHT_DEQUANT):
            quantized[layer[1]] += 1
        else:
            left.append(f"{layer[0]} ({layer[1]})")
    return {"quantized": dict(quantized), "total": dict(total), "left_in_float": left, "skipped_by_config": list(float_modules)}


def weighted_layer(node: torch.fx.Node) -> tuple[str, str] | None:
    """(module name, layer type) of a Conv/Linear call in an exported graph, else None."""
    kind = WEIGHTED_OPS.get(str(node.target)) if node.op == "call_function" else None
    if kind is None or len(node.args) < 2:
        return None
    stack = node.meta.get("nn_module_stack")
    fqn = list(stack.values())[-1][0] if stack else None
    return (fqn or node.name), kind
