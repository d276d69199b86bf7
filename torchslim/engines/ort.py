"""ONNX Runtime: the model exported as ONNX (torch.onnx's dynamo exporter, the TorchScript exporter
where that fails), run by a CPU InferenceSession."""
from __future__ import annotations

import re

import torch

from ..errors import first_line
from ..progress import quiet
from .base import EngineModule, from_numpy, to_numpy
from .export import dynamic_dims, export_with_shapes, torch_export

# ORT's idle workers busy-wait after each call with spinning on (its default). Without a pause that
# slowed the PyTorch models timed right after it 5-100x on a small machine (BENCHMARKS.md, "Against the
# peers"), so torchslim once turned it off; but off, every small call pays a thread wake-up (Fashion CNN
# b1: 0.34 ms off vs 0.23-0.29 ms on, 2 threads, 2026-12-08). The search's timing now pauses
# measure.SETTLE_MS before each turn where an engine is timed (the workers are asleep again), and
# benchmarks/engines_ab.py --with-spinning --settle 50 finds eager no more disturbed by a spinning
# session than by a quiet one: so the saved session spins, as ORT serves by default.
SPIN = {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"}


def export_onnx(model: torch.nn.Module, example, path: str) -> tuple[str, dict]:
    """Write the model as ONNX to `path`, the batch (and a token model's sequence length) dynamic
    where the model allows it: torch.onnx.export's dynamo exporter, the TorchScript exporter where
    that fails. Returns (the exporter that worked, {"dynamic": [...], "serves": note})."""

    def export(ex, dims):
        errors = []
        for dynamo in (True, False):
            try:
                export_onnx_with(model, ex, dims, path, dynamo)
                return ("dynamo" if dynamo else "torchscript"), onnx_input_shapes(path)
            except Exception as e:  # noqa: BLE001 - try the other exporter
                msg = re.sub(r"\x1b\[[0-9;]*m", "", first_line(e))  # the exporter colours its messages
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {msg[:200]}")
        raise RuntimeError("ONNX export failed: " + "; ".join(errors))

    return export_with_shapes(export, example, dynamic_dims(example))


def export_onnx_with(model, ex, dims: dict[int, str], path: str, dynamo: bool) -> None:
    """One ONNX export of `model` at the inputs `ex`, `dims` dynamic in every input tensor (dynamo:
    from torch.export's program, whose specialized dimensions then stay static in the graph)."""
    with torch.no_grad():
        if dynamo:
            ep, _ = torch_export(model, ex, dims)
            with quiet(output=True):
                torch.onnx.export(ep, (), path, dynamo=True, external_data=False, verbose=False)
            return
        kw: dict = {}
        if dims:
            names = [f"input{i}" for i in range(len(ex.tensors()))]
            kw.update(input_names=names, dynamic_axes={n: {i: d.replace(" ", "_") for i, d in dims.items()} for n in names})
        with quiet(output=True):
            torch.onnx.export(model, tuple(ex.args), path, kwargs=ex.kwargs or None, dynamo=False, external_data=False, **kw)


def onnx_input_shapes(path: str) -> list[tuple]:
    """The ONNX graph's input shapes, a dynamic dimension as its name (a str). A dimension the
    export specialized (the dynamo exporter names it by its value, "2") is written back as static."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    fixed = [d for i in inputs for d in i.type.tensor_type.shape.dim if d.HasField("dim_param") and d.dim_param.isdigit()]
    for d in fixed:
        d.dim_value = int(d.dim_param)
    if fixed:
        onnx.save(proto, path)
    return [tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in i.type.tensor_type.shape.dim)
            for i in inputs]


class OrtModule(EngineModule):
    """An ONNX model (model.onnx) run by an ONNX Runtime CPU InferenceSession."""

    engine = "onnxruntime"
    needs = ("onnxruntime",)

    def build(self):
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
        self.inputs = [i.name for i in sess.get_inputs()]
        self.outputs = [o.name for o in sess.get_outputs()]  # named once: run(None) looks them up per call
        return sess

    def run(self, flat):
        if len(flat) != len(self.inputs):
            raise RuntimeError(f"the ONNX graph takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(flat)} tensors")
        outs = self.runner.run(self.outputs, dict(zip(self.inputs, map(to_numpy, flat))))
        return list(map(from_numpy, outs))

    @classmethod
    def serving_lines(cls, meta: dict, path: str) -> str:
        cfg = "".join(f"so.add_session_config_entry({k!r}, {v!r})\n" for k, v in meta.get("config_entries", {}).items())
        return ("import onnxruntime as ort\n"
                "so = ort.SessionOptions()\n"
                "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
                f"so.intra_op_num_threads, so.inter_op_num_threads = {meta.get('threads', 1)}, 1\n{cfg}"
                f"sess = ort.InferenceSession({path!r}, so, providers=['CPUExecutionProvider'])\n"
                "outs = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), example_args)})\n")

    @classmethod
    def deploy_how(cls, path: str, meta_path: str) -> str:
        return f"onnxruntime.InferenceSession('{path}') with the session options in {meta_path}"
