"""OpenVINO: the PyTorch model converted by ov.convert_model (from the ONNX file where the PyTorch
frontend fails), compiled for CPU with its default inference precision (BF16 on CPUs with AMX or
AVX512-BF16), with FP32 forced (to separate precision from kernels), and NNCF INT8 (nncf.quantize on
the case's real calibration batches). INFERENCE_NUM_THREADS = the suite's thread count, one stream."""
from __future__ import annotations

import os
import warnings

import torch

from benchmarks.peers.common import Env, Prepared, file_bytes, first_line, method


def _convert(bundle, env: Env):
    """(ov.Model, seconds), shared by the OpenVINO methods."""
    def make():
        import openvino as ov

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = ov.convert_model(bundle.model.eval(), example_input=bundle.example)
                env.cache["ov_frontend"] = "PyTorch frontend"
            except Exception as e:  # noqa: BLE001 - fall back to the ONNX file
                from benchmarks.peers.ort_peers import export_onnx

                path, _ = export_onnx(bundle, env)
                model = ov.convert_model(path)
                env.cache["ov_frontend"] = f"ONNX frontend (PyTorch frontend: {first_line(e)[:80]})"
        return model

    return env.cached("ov_model", make)


def _compiled(name: str, ov_model, env: Env, notes: list[str], shared_s: float, extra: dict | None = None,
              int8: bool = False) -> Prepared:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": env.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", **(extra or {})}
    try:
        compiled = ov.Core().compile_model(ov_model, "CPU", config)
    except RuntimeError as e:  # no BF16 kernel for some INT8 graphs on AVX512-BF16 without AMX (torchslim does the same)
        if "No suitable implementations" not in str(e) or "INFERENCE_PRECISION_HINT" in config:
            raise
        config["INFERENCE_PRECISION_HINT"] = "f32"
        notes = notes + ["no CPU kernel with BF16 float parts here: compiled with INFERENCE_PRECISION_HINT=f32"]
        compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    runs_in = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # bf16 | f32 | f16
    runs_in = {"f32": "fp32", "f16": "fp16"}.get(runs_in, runs_in)

    def run(args):
        out = request.infer([a.detach().numpy() for a in args])
        outs = [torch.from_numpy(out[o].copy()) for o in compiled.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def bind(args):
        inputs = [a.detach().numpy() for a in args]
        return lambda: request.infer(inputs, share_inputs=True)

    path = os.path.join(env.tmp, f"{name}.xml")
    ov.save_model(ov_model, path, compress_to_fp16=False)
    notes = [env.cache.get("ov_frontend", "?"), f"float parts run in {runs_in}"] + notes
    return Prepared(run=run, bind=bind, size_bytes=file_bytes(path, path[:-4] + ".bin"), notes=notes, shared_prep_s=shared_s,
                    precision="int8-static" if int8 else runs_in)


@method("openvino-default", "OpenVINO", "default")
def ov_default(bundle, env: Env) -> Prepared:
    model, convert_s = _convert(bundle, env)
    return _compiled("default", model, env, [], convert_s)


@method("openvino-fp32", "OpenVINO", "fp32")
def ov_fp32(bundle, env: Env) -> Prepared:
    model, convert_s = _convert(bundle, env)
    return _compiled("fp32", model, env, [], convert_s, {"INFERENCE_PRECISION_HINT": "f32"})


@method("openvino-nncf-int8", "OpenVINO", "int8-static")
def ov_nncf_int8(bundle, env: Env) -> Prepared:
    import nncf

    model, convert_s = _convert(bundle, env)
    calib = bundle.calibration()
    dataset = nncf.Dataset(calib, lambda batch: [a.numpy() for a in batch])
    kind = nncf.ModelType.TRANSFORMER if bundle.case.transformer else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(model.clone(), dataset, subset_size=len(calib), model_type=kind)
    notes = [f"nncf.quantize, {len(calib)} calibration batches" + (", model_type=TRANSFORMER" if kind else "")]
    return _compiled("nncf_int8", quantized, env, notes, convert_s, int8=True)
