"""ONNX Runtime recipes: the model exported to ONNX (batch and sequence dims dynamic where the model
allows), FP32 / dynamic INT8 / static INT8 QDQ, served by an ORT InferenceSession."""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import engines
from ..device import seven_bit_int8
from ..calibration import DEFAULT_SAMPLES, cap
from ..engines.ort import SPIN, export_onnx
from ..progress import quiet
from ..errors import first_line
from ..quant import bias_correction
from .base import Context, TechniqueConfig, register
from .static_int8 import NO_CALIBRATION


@dataclass(frozen=True)
class OrtConfig(TechniqueConfig):
    """quantize: 'none' (FP32) or 'dynamic' (int8 weights, per-call activation scales)."""

    name = "ort"
    runtime: ClassVar[str] = "onnxruntime"
    lossy = engines.PerConfig(lambda cfg: cfg.quantize != "none")
    quantize: str = "none"
    transformer_optimizer: bool = True  # FP32 only: ORT's BERT fusion where the model has attention
    reduce_range: bool | None = None  # INT8: 7-bit weights; None = where the CPU lacks VNNI (device.seven_bit_int8)

    def __post_init__(self):
        if self.quantize not in ("none", "dynamic"):
            raise ValueError(f"quantize must be 'none' or 'dynamic', not {self.quantize!r} (static: OrtStaticInt8Config)")

    def label(self) -> str:
        return "ort" if self.quantize == "none" else "ort-int8-dynamic"

    @classmethod
    def candidates(cls, device: torch.device) -> list[tuple[TechniqueConfig, ...]]:
        """ort, ort-int8-dynamic, ort-int8-static (CPU only)."""
        if device.type != "cpu":
            return []
        return [(cls(),), (cls(quantize="dynamic"),), (OrtStaticInt8Config(),)]


@dataclass(frozen=True)
class OrtStaticInt8Config(TechniqueConfig):
    """QDQ, per-channel int8 weights, uint8 activations calibrated (MinMax by default) on the same
    calibration batches as the torch static recipes; the biases corrected for the weights' rounding,
    and on depthwise-separable CNNs the stem conv kept in float (issue 27)."""

    name = "ort_static_int8"
    runtime: ClassVar[str] = "onnxruntime"
    needs_calibration = True
    lossy: ClassVar[bool] = True
    per_layer_skip: ClassVar[bool] = True  # skip -> quantize_static(nodes_to_exclude=...)
    per_channel: bool = True
    max_samples: int = DEFAULT_SAMPLES
    skip: tuple[str, ...] = ()  # fnmatch patterns of Conv/Linear module names to keep in float
    reduce_range: bool | None = None  # 7-bit weights; None = where the CPU lacks VNNI (device.seven_bit_int8)
    calibration: str = "minmax"  # activation ranges: ORT's CalibrationMethod "minmax" | "percentile" | "entropy"
    bias_correction: bool = True  # quant.bias_correction on the calibration batches before export
    # keep the stem (the first conv the input meets) in float; None: where the model has depthwise
    # convs, whose stem's rounding error reaches every later layer (EfficientNet-Lite0: 0.953 -> 0.991)
    float_stem: bool | None = None

    def __post_init__(self):
        if self.calibration not in _CALIBRATION:
            raise ValueError(f"calibration must be one of {', '.join(_CALIBRATION)}, not {self.calibration!r}")
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")
        if isinstance(self.skip, str) or not all(isinstance(p, str) and p for p in self.skip):
            raise ValueError(f"skip must be a tuple of module-name patterns, not {self.skip!r}")

    def label(self) -> str:
        return "ort-int8-static" + ("" if self.calibration == "minmax" else f"-{self.calibration}") \
            + ("" if self.per_channel else "-per-tensor") + ("" if self.bias_correction else "-no-bc") \
            + {None: "", True: "-float-stem", False: "-int8-stem"}[self.float_stem] + ("-skip" if self.skip else "")


_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def has_attention(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in model.modules())


def _bert_optimized(path: str, out: str, notes: list[str]) -> str:
    """ORT's transformer fusion (Attention, LayerNorm, GELU); the plain graph where it fuses no attention."""
    from onnxruntime.transformers import optimizer

    try:
        with quiet(output=True):
            opt = optimizer.optimize_model(path, model_type="bert", num_heads=0, hidden_size=0)
            fused = {k: v for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
    except Exception as e:  # noqa: BLE001 - the plain graph still serves
        notes.append(f"transformer optimizer failed ({first_line(e)[:100]}): plain graph")
        return path
    if not any(k in fused for k in ("Attention", "MultiHeadAttention")):
        notes.append("transformer optimizer fused no attention: plain graph")
        return path
    opt.save_model_to_file(out)
    notes.append("transformer optimizer: " + ", ".join(f"{k} x{v}" for k, v in sorted(fused.items())))
    return out


class _Reader:
    """A CalibrationDataReader over torchslim calibration Examples."""

    def __init__(self, names: list[str], batches):
        self._feeds = [{n: t.detach().cpu().numpy() for n, t in zip(names, b.tensors())} for b in batches]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def onnx_layers(path: str) -> dict[str, list[str]]:
    """module name -> the names of the ONNX nodes it became (the dynamo exporter's name_scopes
    metadata, or the TorchScript exporter's '/a/a.b/Op' node names)."""
    import ast

    import onnx

    out: dict[str, list[str]] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" in meta:
            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
            module = scopes[-2] if len(scopes) >= 2 else ""
        else:
            parts = node.name.strip("/").split("/")
            module = parts[-2] if len(parts) >= 2 else ""
        if module:
            out.setdefault(module, []).append(node.name)
    return out



def float_layers(model: torch.nn.Module, cfg: "OrtStaticInt8Config", example) -> tuple[str, ...]:
    """The layers kept in float: `skip`'s, and the stem conv where float_stem says so."""
    return bias_correction.with_float_stem(model, example, tuple(engines.resolve_skip(model, cfg.skip)), cfg.float_stem)


def layers_in_call_order(model: torch.nn.Module, example, path: str) -> dict[str, list[str]]:
    """Conv/Linear module name -> [its Conv/Gemm/MatMul node], paired by call order. The exporter
    folds an eval-mode BatchNorm into the conv before it and names the folded node after the
    BatchNorm (EfficientNet, MobileNet, ResNet: no node carries the conv's name), so a skip of a
    conv by name excluded nothing. Empty where the counts differ (a layer called twice, attention
    matmuls): the names from the exporter's metadata are all there is then."""
    import onnx

    order = bias_correction.call_order(model, example)
    ops = [n.name for n in onnx.load(path, load_external_data=False).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(ops) != len(order) or len(set(order)) != len(order):
        return {}
    return {name: [op] for name, op in zip(order, ops)}


def pre_process(path: str, out: str) -> None:
    """ORT's quant_pre_process, run from the folder of `out`: where symbolic shape inference cannot
    finish (dynamic dimensions) ORT saves its partial model and a ~size-of-the-weights external data
    file into the working directory; they stay in our temporary folder. Then again without it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path, out, cwd = os.path.abspath(path), os.path.abspath(out), os.getcwd()
    os.chdir(os.path.dirname(out))
    try:
        try:
            with quiet(output=True):
                quant_pre_process(path, out)
        except Exception:  # noqa: BLE001 - symbolic inference is optional: ONNX shape inference still runs
            with quiet(output=True):
                quant_pre_process(path, out, skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)


def _static_int8(path: str, tmp: str, cfg: OrtStaticInt8Config, model, ctx: Context, notes: list[str]) -> str:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = os.path.join(tmp, "pre.onnx")
    try:  # shape inference and graph clean-up, as ORT recommends before static quantization
        pre_process(path, src)
    except Exception as e:  # noqa: BLE001 - optional step
        src = path
        notes.append(f"quant_pre_process skipped ({first_line(e)[:80]})")
    # layers -> nodes in the graph quantize_static sees (the clean-up may drop nodes, not rename them)
    nodes, present = onnx_layers(path), {n.name for n in onnx.load(src, load_external_data=False).graph.node}
    nodes.update(layers_in_call_order(model, ctx.example, path))
    floats = float_layers(model, cfg, ctx.example)
    exclude = [n for layer in floats for n in nodes.get(layer, []) if n in present]
    ctx.details[cfg.name] = {"quantized": [n for n in engines.quantizable_layers(model) if n in nodes and n not in floats],
                             "float": list(floats), "excluded_nodes": exclude}
    names = [i.name for i in ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()]
    batches = cap(ctx.calibration(), cfg.max_samples)
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(names, batches)
    out = os.path.join(tmp, "int8_static.onnx")
    seven_bit = seven_bit_int8(cfg.reduce_range)
    with quiet(output=True):
        quantize_static(src, out, reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, _CALIBRATION[cfg.calibration]),
                        nodes_to_exclude=exclude, reduce_range=seven_bit)
    notes.append(f"QDQ, {'per-channel' if cfg.per_channel else 'per-tensor'} "
                 f"{'7-bit (reduce_range)' if seven_bit else 'int8'} weights, uint8 activations, "
                 f"{_CALIBRATION[cfg.calibration]} on {sum(b.batch_size for b in batches)} calibration samples"
                 + (f"; kept in float: {', '.join(floats)} ({len(exclude)} ONNX nodes excluded)" if floats else ""))
    return out


# -- handlers -----------------------------------------------------------------------------------

def applies_engine(model, ctx: Context, *modules: str) -> str | None:
    """What every engine recipe needs: the extra installed, a CPU, a plain PyTorch model."""
    reason = engines.missing(*modules)
    if reason:
        return reason
    if ctx.device.type != "cpu":
        return "wired for the CPU only"
    if isinstance(model, torch.jit.ScriptModule) or isinstance(model, engines.EngineModule):
        return "needs a plain PyTorch model to export (not TorchScript or another engine's)"
    from .compile import Compiled
    from .fast_transformer import has_packed_encoder

    if isinstance(model, Compiled):
        return "the model is already compiled: export the eager model"
    if has_packed_encoder(model):
        return "the fast_transformer packed path has data-dependent shapes: export cannot capture it"
    return None


def _applies_ort(model, cfg, ctx):
    return applies_engine(model, ctx, "onnxruntime", "onnx")


def _applies_static(model, cfg, ctx):
    return NO_CALIBRATION if ctx.calibration is None else _applies_ort(model, cfg, ctx)


def _build(model, cfg, ctx: Context) -> engines.OrtModule:
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        if isinstance(cfg, OrtStaticInt8Config) and cfg.bias_correction:
            model = copy.deepcopy(model)  # the caller's float model keeps its biases
            done = bias_correction.correct_biases(model, cap(ctx.calibration(), cfg.max_samples),
                                                  skip=float_layers(model, cfg, ctx.example))
            notes.append(f"bias correction on {len(done)} layers")
        exporter, shapes = export_onnx(model, ctx.example, path)
        notes.append(f"{exporter} ONNX export, {shapes['serves']}")
        if isinstance(cfg, OrtStaticInt8Config):
            path = _static_int8(path, tmp, cfg, model, ctx, notes)
        elif cfg.quantize == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            out = os.path.join(tmp, "int8_dynamic.onnx")
            seven_bit = seven_bit_int8(cfg.reduce_range)
            with quiet(output=True):
                quantize_dynamic(path, out, weight_type=QuantType.QInt8, reduce_range=seven_bit)
            path = out
            notes.append(f"quantize_dynamic(weight_type=QInt8, reduce_range={seven_bit})")
        elif cfg.transformer_optimizer and has_attention(model):
            path = _bert_optimized(path, os.path.join(tmp, "bert.onnx"), notes)
        with open(path, "rb") as f:
            data = f.read()
    meta = {"exporter": exporter, "threads": torch.get_num_threads(), "inter_op_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
            "config_entries": SPIN, **engines.out_spec(model, ctx.example), **shapes, "notes": notes}
    ctx.notes.extend(notes + [f"ONNX Runtime, {meta['threads']} intra-op thread(s), spinning on (its default)"])
    return engines.OrtModule({"model.onnx": data}, meta)


@register(OrtConfig, applies=_applies_ort)
def apply_ort(model, cfg: OrtConfig, ctx: Context):
    return _build(model, cfg, ctx)


@register(OrtStaticInt8Config, applies=_applies_static)
def apply_ort_static(model, cfg: OrtStaticInt8Config, ctx: Context):
    return _build(model, cfg, ctx)
