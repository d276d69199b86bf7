"""OpenVINO: the model converted by openvino.convert_model (the PyTorch frontend, the ONNX export as
a fallback) with the batch and sequence dims dynamic where the model allows, saved as IR
(model.xml + model.bin) and compiled for the CPU plugin."""
from __future__ import annotations

import os
import tempfile

import torch
import torch.nn as nn

from ..errors import first_line
from ..progress import quiet
from .base import EngineModule, to_numpy
from .export import dynamic_dims, served_shapes, shapes_meta, static_meta
from .ort import export_onnx


def convert(model: nn.Module, example, notes: list[str]):
    """(the OpenVINO model with the batch / sequence dims dynamic where it allows, the shapes note)."""
    import openvino as ov

    with quiet(output=True), torch.no_grad():
        try:
            example_input = dict(example.kwargs) if example.kwargs and not example.args else tuple(example.args)
            if example.kwargs and example.args:
                raise ValueError("positional and keyword inputs together")
            ov_model = ov.convert_model(model, example_input=example_input)
            notes.append("OpenVINO PyTorch frontend")
        except Exception as e:  # noqa: BLE001 - the ONNX file is the fallback
            with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                export_onnx(model, example, path)
                ov_model = ov.convert_model(path)
            notes.append(f"OpenVINO ONNX frontend (PyTorch frontend: {first_line(e)[:80]})")
    return ov_model, set_shapes(ov_model, example)


def set_shapes(ov_model, example) -> dict:
    """Every input dynamic in the batch / sequence dims, static in the rest (the frontend leaves
    them all dynamic); the example's static shapes where the model refuses that."""
    import openvino as ov

    dims = dynamic_dims(example)
    ts = example.tensors()
    if len(ov_model.inputs) != len(ts):
        return {"dynamic": [], "serves": f"input shapes as converted ({len(ov_model.inputs)} graph inputs for {len(ts)} tensors)"}
    want = {port: ov.PartialShape([-1 if i in dims else n for i, n in enumerate(t.shape)]) for port, t in zip(ov_model.inputs, ts)}
    try:
        ov_model.reshape(want)
    except Exception as e:  # noqa: BLE001 - static shapes are the fallback
        ov_model.reshape({port: ov.PartialShape(list(t.shape)) for port, t in zip(ov_model.inputs, ts)})
        return static_meta(example, dims, f"OpenVINO refused dynamic shapes: {first_line(e)[:160]}")
    shapes = [tuple(d.get_length() if d.is_static else "?" for d in i.get_partial_shape()) for i in ov_model.inputs]
    return shapes_meta(example, dims, *served_shapes(example, dims, shapes))


def ir_files(ov_model) -> dict[str, bytes]:
    """The model as OpenVINO IR: {"model.xml": ..., "model.bin": ...} (weights not compressed to FP16)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as tmp:
        ov.save_model(ov_model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        files = {}
        for name in ("model.xml", "model.bin"):
            with open(os.path.join(tmp, name), "rb") as f:
                files[name] = f.read()
    return files


class OpenVinoModule(EngineModule):
    """An OpenVINO IR (model.xml + model.bin) compiled for the CPU plugin."""

    engine = "openvino"
    needs = ("openvino",)

    def build(self):
        import numpy as np
        import openvino as ov

        core = ov.Core()
        weights = ov.Tensor(np.frombuffer(self.file("model.bin"), dtype=np.uint8))
        model = core.read_model(model=self.file("model.xml"), weights=weights)
        self.compiled = core.compile_model(model, "CPU", self.meta["config"])
        return self.request()

    def request(self):
        self.ports = list(self.compiled.outputs)
        return self.compiled.create_infer_request()

    @classmethod
    def around(cls, compiled, meta: dict) -> "OpenVinoModule":
        """The same tensor-in/tensor-out call around an ov.CompiledModel made elsewhere (NNCF's
        accuracy control hands one to its validation function); it has no files: not for saving."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.names, self.meta, self.compiled = [], dict(meta, engine=cls.engine, files=[]), compiled
        self.build = self.request
        self.init_runner()
        return self

    def run(self, flat):
        out = self.runner.infer([to_numpy(t) for t in flat], share_inputs=True)
        return [torch.from_numpy(out[o]) for o in self.ports]

    def runs_in(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    @classmethod
    def serving_lines(cls, meta: dict, path: str) -> str:
        return ("import openvino as ov\n"
                f"compiled = ov.Core().compile_model({path!r}, 'CPU', {meta.get('config', {})!r})\n"
                "outs = compiled([a.numpy() for a in example_args])  # a dict: output port -> numpy array\n")

    @classmethod
    def deploy_how(cls, path: str, meta_path: str) -> str:
        return f"openvino.Core().compile_model('{path}', 'CPU', config) with the config in {meta_path}"
