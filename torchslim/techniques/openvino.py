"""OpenVINO recipes: the model converted by openvino.convert_model (PyTorch frontend; the ONNX export
as a fallback), compiled for the CPU.

`openvino`: OpenVINO's default inference precision (BF16 on CPUs with AMX/AVX512-BF16, else FP32);
`openvino-fp32`: INFERENCE_PRECISION_HINT=f32 (skipped where the default already is FP32);
`openvino-int8`: NNCF post-training INT8 (nncf.quantize) on the same calibration batches as the
torch static recipes (model_type=TRANSFORMER where the model has attention).

Compiled with INFERENCE_NUM_THREADS = torch's thread count, NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import engines
from ..calibration import DEFAULT_SAMPLES, cap
from ..errors import first_line
from .base import Context, TechniqueConfig, register
from .ort import _numpy, applies_engine, export_onnx, has_attention, quiet
from .static_int8 import NO_CALIBRATION

PRECISIONS = ("default", "fp32")


@dataclass(frozen=True)
class OpenVinoConfig(TechniqueConfig):
    name = "openvino"
    engine: ClassVar[str] = "openvino"
    precision: str = "default"  # OpenVINO's choice (BF16 where the CPU has it) | fp32

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")

    def label(self) -> str:
        return "openvino" if self.precision == "default" else f"openvino-{self.precision}"


@dataclass(frozen=True)
class OpenVinoInt8Config(TechniqueConfig):
    name = "openvino_int8"
    engine: ClassVar[str] = "openvino"
    needs_calibration = True
    max_samples: int = DEFAULT_SAMPLES

    def __post_init__(self):
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")

    def label(self) -> str:
        return "openvino-int8"


class OpenVinoModule(engines.EngineModule):
    engine = "openvino"

    def _build(self):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(model=self.file("model.xml"), weights=ov.Tensor(bytearray_np(self.file("model.bin"))))
        self._compiled = core.compile_model(model, "CPU", self.meta["config"])
        return self._compiled.create_infer_request()

    def _run(self, flat):
        out = self._runner.infer([_numpy(t) for t in flat], share_inputs=True)
        return [torch.from_numpy(out[o]) for o in self._compiled.outputs]

    def runs_in(self) -> str:
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def bytearray_np(data: bytes):
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)


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
    return _applies(model, cfg, ctx) or engines.missing("nncf")


def _convert(model, ctx: Context, notes: list[str]):
    import openvino as ov

    ex = ctx.example
    with quiet(), torch.no_grad():
        try:
            example_input = dict(ex.kwargs) if ex.kwargs and not ex.args else tuple(ex.args)
            if ex.kwargs and ex.args:
                raise ValueError("positional and keyword inputs together")
            ov_model = ov.convert_model(model, example_input=example_input)
            notes.append("OpenVINO PyTorch frontend")
        except Exception as e:  # noqa: BLE001 - the ONNX file is the fallback
            with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                export_onnx(model, ex, path)
                ov_model = ov.convert_model(path)
            notes.append(f"OpenVINO ONNX frontend (PyTorch frontend: {first_line(e)[:80]})")
    return ov_model


def _nncf_int8(ov_model, model, cfg: OpenVinoInt8Config, ctx: Context, notes: list[str]):
    import nncf

    batches = cap(ctx.calibration(), cfg.max_samples)
    dataset = nncf.Dataset(batches, lambda b: [t.detach().cpu().numpy() for t in b.tensors()])
    kind = nncf.ModelType.TRANSFORMER if has_attention(model) else None
    with quiet():
        quantized = nncf.quantize(ov_model, dataset, subset_size=len(batches), model_type=kind)
    notes.append(f"nncf.quantize on {sum(b.batch_size for b in batches)} calibration samples"
                 + (", model_type=TRANSFORMER" if kind else ""))
    return quantized


def _build(model, cfg, ctx: Context) -> OpenVinoModule:
    import openvino as ov

    notes: list[str] = []
    ov_model = _convert(model, ctx, notes)
    if isinstance(cfg, OpenVinoInt8Config):
        ov_model = _nncf_int8(ov_model, model, cfg, ctx, notes)
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if isinstance(cfg, OpenVinoConfig) and cfg.precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as tmp:
        xml = os.path.join(tmp, "model.xml")
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        files = {}
        for name in ("model.xml", "model.bin"):
            with open(os.path.join(tmp, name), "rb") as f:
                files[name] = f.read()
    meta = {"config": config, "threads": config["INFERENCE_NUM_THREADS"], **engines.out_spec(model, ctx.example),
            "notes": notes}
    module = OpenVinoModule(files, meta)
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
