"""OpenVINO recipes: the model converted by engines/openvino.py (PyTorch frontend, the ONNX export as
a fallback; batch and sequence dims dynamic where the model allows), default precision / FP32 / NNCF INT8."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import engines
from ..calibration import DEFAULT_SAMPLES, cap
from ..device import seven_bit_int8
from ..engines.openvino import convert, ir_files
from ..progress import quiet
from ..quant.bias_correction import call_order
from .base import Context, TechniqueConfig, register
from .ort import applies_engine, has_attention
from .static_int8 import NO_CALIBRATION

PRECISIONS = ("default", "fp32")


# `openvino`: OpenVINO's default inference precision (BF16 on CPUs with AMX/AVX512-BF16, else FP32);
# compiled with INFERENCE_NUM_THREADS = torch's thread count, NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY.
@dataclass(frozen=True)
class OpenVinoConfig(TechniqueConfig):
    name = "openvino"
    runtime: ClassVar[str] = "openvino"
    lossy = engines.PerConfig(lambda cfg: cfg.precision != "fp32", default=True)  # default: BF16 where native
    precision: str = "default"  # OpenVINO's choice (BF16 where the CPU has it) | fp32

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")

    def label(self) -> str:
        return "openvino" if self.precision == "default" else f"openvino-{self.precision}"

    @classmethod
    def candidates(cls, device: torch.device) -> list[tuple[TechniqueConfig, ...]]:
        """openvino, openvino-fp32, openvino-int8 (CPU only)."""
        if device.type != "cpu":
            return []
        return [(cls(),), (cls(precision="fp32"),), (OpenVinoInt8Config(),), (OpenVinoInt8Config(accuracy_control=True),)]


@dataclass(frozen=True)
class OpenVinoInt8Config(TechniqueConfig):
    """NNCF post-training INT8 (nncf.quantize) on the same calibration batches as the torch static
    recipes (model_type=TRANSFORMER where the model has attention). accuracy_control: NNCF's
    quantize_with_accuracy_control against the workload's task metric and --max-drop (it ranks the
    quantized layers and returns them to float until the drop is within budget); needs a task metric."""

    name = "openvino_int8"
    runtime: ClassVar[str] = "openvino"
    needs_calibration = True
    lossy: ClassVar[bool] = True
    accuracy_aware: ClassVar[bool] = True
    # skip -> nncf.IgnoredScope; accuracy control picks its own float layers (no search fallback)
    per_layer_skip = engines.PerConfig(lambda cfg: not cfg.accuracy_control, default=True)
    max_samples: int = DEFAULT_SAMPLES
    skip: tuple[str, ...] = ()  # fnmatch patterns of Conv/Linear module names to keep in float
    # NNCF's OverflowFix on every layer (7-bit weights) instead of its default (first layer only);
    # None = where the CPU lacks VNNI, the same saturation ORT's reduce_range avoids (device.seven_bit_int8)
    overflow_fix: bool | None = None
    accuracy_control: bool = False

    def __post_init__(self):
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")
        if isinstance(self.skip, str) or not all(isinstance(p, str) and p for p in self.skip):
            raise ValueError(f"skip must be a tuple of module-name patterns, not {self.skip!r}")

    def label(self) -> str:
        return "openvino-int8" + ("-ac" if self.accuracy_control else "") + ("-skip" if self.skip else "")


def default_is_fp32() -> bool:
    """True where OpenVINO's CPU plugin has no BF16 (its default precision is then FP32)."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" not in caps


def _applies(model, cfg, ctx):
    reason = applies_engine(model, ctx, "openvino")
    if reason is None and isinstance(cfg, OpenVinoConfig) and cfg.precision == "fp32" and default_is_fp32():
        return "OpenVINO's default precision here already is FP32 (the openvino recipe)"
    return reason


def _applies_int8(model, cfg, ctx):
    if ctx.calibration is None:
        return NO_CALIBRATION
    if cfg.accuracy_control and ctx.task is None:
        return "NNCF's accuracy control needs the workload's task metric (an evaluate function; openvino-int8 without it)"
    return _applies(model, cfg, ctx) or engines.missing("nncf")


def layer_ops(ov_model, model, example=None) -> dict[str, list[str]]:
    """Conv/Linear module name -> the names of the OpenVINO ops it became (the PyTorch frontend
    names them '__module.<name>/aten::...'). A conv whose BatchNorm the frontend folded into it is
    named after the fold ('Multiply_123'): those are paired with the modules by call order (given
    `example`) where the counts of convs/matmuls and Conv/Linear calls agree."""
    out: dict[str, list[str]] = {}
    names = [op.get_friendly_name() for op in ov_model.get_ops()]
    for layer in engines.quantizable_layers(model):
        prefix = f"__module.{layer}/"
        hits = [n for n in names if n.startswith(prefix)]
        if hits:
            out[layer] = hits
    if example is not None and set(out) != set(engines.quantizable_layers(model)):
        order = call_order(model, example)
        ops = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
               if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
        if len(ops) == len(order) == len(set(order)):
            out.update({layer: [op] for layer, op in zip(order, ops) if layer not in out})
    return out


def _nncf_int8(ov_model, model, cfg: OpenVinoInt8Config, ctx: Context, notes: list[str]):
    import nncf

    batches = cap(ctx.calibration(), cfg.max_samples)
    dataset = nncf.Dataset(batches, lambda b: [t.detach().cpu().numpy() for t in b.tensors()])
    kind = nncf.ModelType.TRANSFORMER if has_attention(model) else None
    ops, floats = layer_ops(ov_model, model, ctx.example), engines.resolve_skip(model, cfg.skip)
    missing = [f for f in floats if f not in ops]
    if missing:
        raise RuntimeError(f"cannot keep {', '.join(missing)} in float: no OpenVINO op is named after it (ONNX frontend?)")
    ignored = nncf.IgnoredScope(names=[n for f in floats for n in ops[f]], validate=False) if floats else None
    ctx.details[cfg.name] = {"quantized": [n for n in ops if n not in floats], "float": floats}
    seven_bit, advanced = seven_bit_int8(cfg.overflow_fix), None
    if seven_bit:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
    with quiet(output=True):
        if cfg.accuracy_control:
            quantized = _with_accuracy_control(ov_model, model, dataset, len(batches), kind, ignored, advanced, ctx, notes)
        else:
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(batches), model_type=kind,
                                      ignored_scope=ignored, advanced_parameters=advanced)
    notes.append(f"nncf.{'quantize_with_accuracy_control' if cfg.accuracy_control else 'quantize'} on {sum(b.batch_size for b in batches)} calibration samples"
                 + (", model_type=TRANSFORMER" if kind else "") + (", overflow fix on every layer (7-bit)" if seven_bit else "") + (f"; kept in float: {', '.join(floats)}" if floats else ""))
    return quantized


def _with_accuracy_control(ov_model, model, dataset, samples: int, kind, ignored, advanced, ctx: Context, notes: list[str]):
    """nncf.quantize_with_accuracy_control with the workload's own task metric as NNCF's validation
    function: one validation item standing for the workload's whole evaluation (the metric ignores
    NNCF's data and evaluates the compiled model wrapped as a torch module), so NNCF ranks and
    restores layers by the real metric, an evaluation per step. Returns the quantized ov.Model."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    spec = engines.out_spec(model, ctx.example)
    scores: list[float] = []

    def validation_fn(compiled, _items):
        score = float(ctx.task.evaluate(engines.OpenVinoModule.around(compiled, spec)))
        scores.append(score)
        return score, [score]  # metric mode: the one item's value is the metric

    quantized = nncf.quantize_with_accuracy_control(
        ov_model, dataset, nncf.Dataset([0]), validation_fn, max_drop=ctx.task.max_drop,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=samples, model_type=kind, ignored_scope=ignored,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(ranking_subset_size=1))
    notes.append(f"accuracy control: max drop {ctx.task.max_drop:g}, {len(scores)} task-metric evaluations"
                 + (f" (float model {scores[0]:.4g})" if scores else ""))
    return quantized


def compile_module(files: dict[str, bytes], meta: dict, notes: list[str]) -> engines.OpenVinoModule:
    """The IR compiled for the CPU. OpenVINO 2026.4's CPU plugin has no kernel for some INT8 graphs
    with BF16 float parts on AVX512-BF16 CPUs without AMX ("No suitable implementations": NNCF INT8
    convs exported with static shapes, AMD EPYC); those compile with FP32 float parts instead."""
    config = meta["config"]
    try:
        return engines.OpenVinoModule(files, meta)
    except RuntimeError as e:
        if "INFERENCE_PRECISION_HINT" in config or "No suitable implementations" not in str(e):
            raise
    notes.append("no OpenVINO CPU kernel for this graph with BF16 float parts here (No suitable implementations): "
                 "compiled with INFERENCE_PRECISION_HINT=f32")
    return engines.OpenVinoModule(files, {**meta, "config": {**config, "INFERENCE_PRECISION_HINT": "f32"}, "notes": notes})


def _build(model, cfg, ctx: Context) -> engines.OpenVinoModule:
    notes: list[str] = []
    ov_model, shapes = convert(model, ctx.example, notes)
    notes.append(shapes["serves"])
    if isinstance(cfg, OpenVinoInt8Config):
        ov_model = _nncf_int8(ov_model, model, cfg, ctx, notes)
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if isinstance(cfg, OpenVinoConfig) and cfg.precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    files = ir_files(ov_model)
    meta = {"config": config, "threads": config["INFERENCE_NUM_THREADS"], **engines.out_spec(model, ctx.example),
            **shapes, "notes": notes}
    module = compile_module(files, meta, notes)
    runs = module.runs_in()
    module.meta["runs_in"] = runs
    ctx.notes.extend(notes + [f"OpenVINO CPU, float parts in {runs}, {config['INFERENCE_NUM_THREADS']} thread(s), 1 stream"])
    return module


@register(OpenVinoConfig, applies=_applies)
def apply_openvino(model, cfg: OpenVinoConfig, ctx: Context):
    return _build(model, cfg, ctx)


@register(OpenVinoInt8Config, applies=_applies_int8)
def apply_openvino_int8(model, cfg: OpenVinoInt8Config, ctx: Context):
    return _build(model, cfg, ctx)
