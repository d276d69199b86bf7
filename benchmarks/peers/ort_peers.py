"""ONNX Runtime: the model exported once to ONNX, then FP32 with every graph optimization, INT8
dynamic (quantize_dynamic), INT8 static QDQ (quantize_static on the case's real calibration
batches), and, for Transformers, ORT's BERT fusion optimizer. Sessions run with
intra_op_num_threads = the suite's thread count, inter_op_num_threads = 1, sequential."""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import torch

from benchmarks.peers.common import Env, Prepared, file_bytes, first_line, method


def export_onnx(bundle, env: Env) -> tuple[str, float]:
    """(path of the FP32 .onnx, export seconds). torch.onnx.export's default (dynamo) exporter
    first, the TorchScript exporter where that fails; which one is recorded in env.cache."""
    def make():
        path = os.path.join(env.tmp, "model.onnx")
        errors = []
        for dynamo in (True, False):
            try:
                with _quiet():
                    torch.onnx.export(bundle.model.eval(), bundle.example, path, dynamo=dynamo, external_data=False,
                                      **({"verbose": False} if dynamo else {}))
                env.cache["onnx_exporter"] = "dynamo" if dynamo else "torchscript"
                return path
            except Exception as e:  # noqa: BLE001 - try the other exporter
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {first_line(e)}")
        raise RuntimeError("ONNX export failed: " + "; ".join(errors))

    return env.cached("onnx", make)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress to stdout and warn a lot; keep the suite's output readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _session(path: str, env: Env, notes: list[str], export_s: float) -> Prepared:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = env.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def feeds(args):
        return {n: a.detach().numpy() for n, a in zip(names, args)}

    def run(args):
        outs = sess.run(None, feeds(args))
        return tuple(torch.from_numpy(np.asarray(o)) for o in outs) if len(outs) > 1 else torch.from_numpy(outs[0])

    def bind(args):
        f = feeds(args)
        return lambda: sess.run(None, f)

    notes = [f"{env.cache.get('onnx_exporter', '?')} export"] + notes
    return Prepared(run=run, bind=bind, size_bytes=file_bytes(path), notes=notes, shared_prep_s=export_s)


@method("ort-fp32", "ONNX Runtime", "fp32")
def ort_fp32(bundle, env: Env) -> Prepared:
    path, export_s = export_onnx(bundle, env)
    return _session(path, env, ["ORT_ENABLE_ALL"], export_s)


@method("ort-int8-dynamic", "ONNX Runtime", "int8-dynamic")
def ort_int8_dynamic(bundle, env: Env) -> Prepared:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, export_s = export_onnx(bundle, env)
    out = os.path.join(env.tmp, "int8_dynamic.onnx")
    with _quiet():
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return _session(out, env, ["quantize_dynamic(weight_type=QInt8)"], export_s)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over the case's calibration batches."""

    def __init__(self, names: list[str], batches: list[tuple]):
        self._it = iter([{n: a.numpy() for n, a in zip(names, b)} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax, kept for the interface
        pass


@method("ort-int8-static-qdq", "ONNX Runtime", "int8-static")
def ort_int8_static(bundle, env: Env) -> Prepared:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    path, export_s = export_onnx(bundle, env)
    notes, src = [], path
    try:  # the pre-processing ORT recommends (shape inference, graph clean-up) before static quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src = os.path.join(env.tmp, "preprocessed.onnx")
        with _quiet():
            quant_pre_process(path, src)
    except Exception as e:  # noqa: BLE001 - optional step
        src = path
        notes.append(f"quant_pre_process skipped ({first_line(e)[:80]})")
    names = [i.name for i in ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()]
    calib = bundle.calibration()
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(names, calib)
    out = os.path.join(env.tmp, "int8_static.onnx")
    with _quiet():
        quantize_static(src, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    notes = [f"QDQ, per-channel int8 weights, uint8 activations, MinMax on {len(calib)} batches"] + notes
    return _session(out, env, notes, export_s)


@method("ort-fp32-bert-optimizer", "ONNX Runtime", "fp32", transformer_only=True)
def ort_bert_optimizer(bundle, env: Env) -> Prepared:
    from onnxruntime.transformers import optimizer

    path, export_s = export_onnx(bundle, env)
    with _quiet():
        opt = optimizer.optimize_model(path, model_type="bert", num_heads=0, hidden_size=0)
        fused = {k: v for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
    out = os.path.join(env.tmp, "bert_optimized.onnx")
    opt.save_model_to_file(out)
    if not any(k in fused for k in ("Attention", "MultiHeadAttention")):
        raise RuntimeError(f"the BERT optimizer fused no attention (fused: {fused or 'nothing'})")
    return _session(out, env, ["fused " + ", ".join(f"{k} x{v}" for k, v in sorted(fused.items()))], export_s)
