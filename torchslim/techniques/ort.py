"""ONNX Runtime recipes: the model exported to ONNX, served by an ORT InferenceSession.

`ort`: FP32 with every graph optimization (ORT_ENABLE_ALL), and ORT's transformer fusion optimizer
(model_type="bert") where the model has attention and the optimizer fuses it; `ort-int8-dynamic`:
quantize_dynamic (int8 weights, activations quantized per call); `ort-int8-static`: quantize_static,
QDQ, per-channel int8 weights, uint8 activations calibrated (MinMax) on the same calibration
batches as the torch static recipes.

Sessions run with intra_op_num_threads = torch's thread count, one inter-op thread, sequential,
and ORT's thread spinning OFF: with spinning on, ORT's idle workers busy-wait for tens of
milliseconds after each call, which on a small machine slowed the PyTorch models timed after it
5-100x (see BENCHMARKS.md, "Against the peers"), and a server running torch beside ORT pays the same.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import engines
from ..calibration import DEFAULT_SAMPLES, cap
from ..errors import first_line
from .base import Context, TechniqueConfig, register
from .static_int8 import NO_CALIBRATION

SPIN_OFF = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


@dataclass(frozen=True)
class OrtConfig(TechniqueConfig):
    """quantize: 'none' (FP32) or 'dynamic' (int8 weights, per-call activation scales)."""

    name = "ort"
    engine: ClassVar[str] = "onnxruntime"
    quantize: str = "none"
    transformer_optimizer: bool = True  # FP32 only: ORT's BERT fusion where the model has attention

    def __post_init__(self):
        if self.quantize not in ("none", "dynamic"):
            raise ValueError(f"quantize must be 'none' or 'dynamic', not {self.quantize!r} (static: OrtStaticInt8Config)")

    def label(self) -> str:
        return "ort" if self.quantize == "none" else "ort-int8-dynamic"


@dataclass(frozen=True)
class OrtStaticInt8Config(TechniqueConfig):
    name = "ort_static_int8"
    engine: ClassVar[str] = "onnxruntime"
    needs_calibration = True
    per_channel: bool = True
    max_samples: int = DEFAULT_SAMPLES

    def __post_init__(self):
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {self.max_samples}")

    def label(self) -> str:
        return "ort-int8-static" + ("" if self.per_channel else "-per-tensor")


class OrtModule(engines.EngineModule):
    engine = "onnxruntime"

    def _build(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(self.meta["threads"])
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        for k, v in self.meta.get("config_entries", {}).items():
            so.add_session_config_entry(k, v)
        sess = ort.InferenceSession(self.file(self.names[0]), so, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in sess.get_inputs()]
        self._outputs = [o.name for o in sess.get_outputs()]  # named once: run(None) looks them up per call
        return sess

    def _run(self, flat):
        if len(flat) != len(self._inputs):
            raise RuntimeError(f"the ONNX graph takes {len(self._inputs)} inputs ({', '.join(self._inputs)}), got {len(flat)} tensors")
        outs = self._runner.run(self._outputs, dict(zip(self._inputs, map(_numpy, flat))))
        return [torch.from_numpy(o) if type(o) is np.ndarray else torch.as_tensor(o) for o in outs]


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's data as numpy, without a copy where it is a plain CPU tensor."""
    return t.numpy() if not t.requires_grad and t.device.type == "cpu" else t.detach().cpu().numpy()


# -- export -------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    """The exporters, quantizers and NNCF print progress and warn a lot (through stdout, stderr,
    warnings and logging); a failure still raises with its message."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def export_onnx(model: torch.nn.Module, example, path: str) -> str:
    """Write the model as ONNX to `path` with torch.onnx.export's dynamo exporter, the TorchScript
    exporter where that fails; returns which one worked."""
    errors = []
    for dynamo in (True, False):
        try:
            with quiet(), torch.no_grad():
                torch.onnx.export(model, tuple(example.args), path, kwargs=example.kwargs or None, dynamo=dynamo,
                                  external_data=False, **({"verbose": False} if dynamo else {}))
            return "dynamo" if dynamo else "torchscript"
        except Exception as e:  # noqa: BLE001 - try the other exporter
            msg = re.sub(r"\x1b\[[0-9;]*m", "", first_line(e))  # the exporter colours its messages
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {msg[:200]}")
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


def has_attention(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in model.modules())


def _bert_optimized(path: str, out: str, notes: list[str]) -> str:
    """ORT's transformer fusion (Attention, LayerNorm, GELU); the plain graph where it fuses no attention."""
    from onnxruntime.transformers import optimizer

    try:
        with quiet():
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


def _static_int8(path: str, tmp: str, cfg: OrtStaticInt8Config, ctx: Context, notes: list[str]) -> str:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = os.path.join(tmp, "pre.onnx")
    try:  # shape inference and graph clean-up, as ORT recommends before static quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with quiet():
            quant_pre_process(path, src)
    except Exception as e:  # noqa: BLE001 - optional step
        src = path
        notes.append(f"quant_pre_process skipped ({first_line(e)[:80]})")
    names = [i.name for i in ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()]
    batches = cap(ctx.calibration(), cfg.max_samples)
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(names, batches)
    out = os.path.join(tmp, "int8_static.onnx")
    with quiet():
        quantize_static(src, out, reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    notes.append(f"QDQ, {'per-channel' if cfg.per_channel else 'per-tensor'} int8 weights, uint8 activations, "
                 f"MinMax on {sum(b.batch_size for b in batches)} calibration samples")
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


def _build(model, cfg, ctx: Context) -> OrtModule:
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        exporter = export_onnx(model, ctx.example, path)
        notes.append(f"{exporter} ONNX export")
        if isinstance(cfg, OrtStaticInt8Config):
            path = _static_int8(path, tmp, cfg, ctx, notes)
        elif cfg.quantize == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            out = os.path.join(tmp, "int8_dynamic.onnx")
            with quiet():
                quantize_dynamic(path, out, weight_type=QuantType.QInt8)
            path = out
            notes.append("quantize_dynamic(weight_type=QInt8)")
        elif cfg.transformer_optimizer and has_attention(model):
            path = _bert_optimized(path, os.path.join(tmp, "bert.onnx"), notes)
        with open(path, "rb") as f:
            data = f.read()
    meta = {"exporter": exporter, "threads": torch.get_num_threads(), "inter_op_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
            "config_entries": SPIN_OFF, **engines.out_spec(model, ctx.example), "notes": notes}
    ctx.notes.extend(notes + [f"ONNX Runtime, {meta['threads']} intra-op thread(s), spinning off"])
    return OrtModule({"model.onnx": data}, meta)


@register(OrtConfig, applies=_applies_ort)
def apply_ort(model, cfg: OrtConfig, ctx: Context):
    return _build(model, cfg, ctx)


@register(OrtStaticInt8Config, applies=_applies_static)
def apply_ort_static(model, cfg: OrtStaticInt8Config, ctx: Context):
    return _build(model, cfg, ctx)
