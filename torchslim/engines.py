"""Deployment engines (AOTInductor, ONNX Runtime, OpenVINO): the model as an engine's file, run from
torch tensors to torch tensors (`EngineModule`), saved and reloaded without model code, and the
export helpers the engine recipes (techniques/aoti.py, ort.py, openvino.py) share."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .errors import first_line
from .fileio import atomic_write, write_json

META = "engine.json"
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "openvino"}
# ORT's idle workers busy-wait for tens of milliseconds after each call with spinning on, which on a
# small machine slowed the PyTorch models timed after it 5-100x (BENCHMARKS.md, "Against the peers").
SPIN_OFF = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def missing(*modules: str) -> str | None:
    """None if every module imports here, else 'install torchslim[extra]'."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            return f"install torchslim[{EXTRAS.get(m, m)}] (no {m} here)"
    return None


def to_numpy(t: torch.Tensor):
    """The tensor's data as numpy, sharing its memory where it is a contiguous CPU tensor."""
    if t.device.type == "cpu" and not t.requires_grad:
        return t.numpy() if t.is_contiguous() else t.contiguous().numpy()
    return t.detach().cpu().contiguous().numpy()


def from_numpy(a) -> torch.Tensor:
    """An engine's output as a tensor, sharing the array's memory where it is a numpy array."""
    try:
        return torch.from_numpy(a)
    except TypeError:  # a scalar or a list (ORT sequence outputs)
        return torch.as_tensor(a)


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



class PerConfig:
    """A technique-metadata flag (like the `lossy` ClassVar) whose value depends on the config's
    fields: `fn(config)` on an instance, `default` on the class."""

    def __init__(self, fn, default: bool = False):
        self.fn, self.default = fn, default

    def __get__(self, obj, owner=None):
        return self.default if obj is None else self.fn(obj)

# -- input shapes an export keeps dynamic ---------------------------------------------------------

def dynamic_dims(example) -> dict[int, str]:
    """The input dimensions an engine export keeps dynamic, the ones validation varies: the batch
    (dim 0, shared by every input tensor) and, for token models (an integer input, every tensor
    sharing dim 1 of size >= 4), the sequence length (dim 1)."""
    ts = example.tensors()
    dims: dict[int, str] = {}
    if ts and all(t.dim() >= 1 and t.shape[0] == ts[0].shape[0] for t in ts):
        dims[0] = "batch"
    s = ts[0].shape[1] if ts and ts[0].dim() >= 2 else 0
    if s >= 4 and all(t.dim() >= 2 and t.shape[1] == s for t in ts) and any(not t.is_floating_point() for t in ts):
        dims[1] = "sequence length"
    return dims


def dynamic_shapes(model: nn.Module, example, dims: dict[int, str]):
    """torch.export / torch.onnx.export(dynamo=True) `dynamic_shapes` marking `dims` of every input
    tensor Dim.AUTO (dynamic where the model allows it, static where it does not: no error)."""
    shapes = torch.export.ShapesCollection()
    for t in example.tensors():
        shapes[t] = tuple(torch.export.Dim.AUTO if i in dims else None for i in range(t.dim()))
    return shapes.dynamic_shapes(model, tuple(example.args), dict(example.kwargs))


def served_shapes(example, dims: dict[int, str], shapes: list[tuple]) -> tuple[list[str], str]:
    """(the dimensions the exported graph kept dynamic, a note for the row). `shapes` are the
    graph's input shapes, a dynamic dimension as anything but an int."""
    if not dims:
        return [], "serves the example's input shapes only (the inputs share no batch dimension)"
    kept = [name for i, name in dims.items() if shapes and all(len(s) > i and not isinstance(s[i], int) for s in shapes)]
    size = example.tensors()[0].shape
    static = [f"{name} {size[i]}" for i, name in dims.items() if name not in kept]
    if static:
        return kept, "serves " + " and ".join(static) + " only (the export kept it static)"
    return kept, "dynamic " + " and ".join(kept)


def export_with_shapes(export: Callable, example, dims: dict[int, str]) -> tuple[Any, dict]:
    """`export(inputs, dims) -> (result, graph input shapes)` with `dims` dynamic, at batch 2 where
    the example has batch 1; at the example's static shapes where that fails or the batch
    specializes. Returns (result, shapes_meta(...))."""
    why = ""
    if dims:
        ex = example.for_export() if 0 in dims else example  # batch to stay dynamic
        try:
            result, shapes = export(ex, dims)
            kept, note = served_shapes(example, dims, shapes)
            if ex is example or "batch" in kept:
                return result, shapes_meta(example, dims, kept, note)
            why = "the batch dimension specialized"
        except Exception as e:  # noqa: BLE001 - the static export below is the fallback
            why = first_line(e)
    result, _ = export(example, {})
    if not dims:
        return result, shapes_meta(example, dims, [], served_shapes(example, dims, [])[1])
    size = example.tensors()[0].shape
    what = " and ".join(f"{name} {size[i]}" for i, name in dims.items())
    return result, shapes_meta(example, dims, [], f"serves {what} only (export with dynamic shapes failed: {why[:160]})")



def torch_export(model: nn.Module, example, dims: dict[int, str]) -> tuple[torch.export.ExportedProgram, list[tuple]]:
    """torch.export (non-strict) with `dims` Dim.AUTO; (program, its input shapes: an int where
    static, a str where dynamic)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    shapes = dynamic_shapes(model, example, dims) if dims else None
    with quiet():
        ep = torch.export.export(model, tuple(example.args), dict(example.kwargs), dynamic_shapes=shapes, strict=False)
    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    return ep, [tuple(int(d) if is_concrete_int(d) else str(d) for d in v.shape) for v in vals if isinstance(v, torch.Tensor)]


def export_program(model: nn.Module, example) -> tuple[torch.export.ExportedProgram, dict]:
    """torch.export of `model` with the batch (and a token model's sequence length) dynamic where
    the model allows it; (program, shapes_meta(...))."""
    return export_with_shapes(lambda ex, dims: torch_export(model, ex, dims), example, dynamic_dims(example))

def shapes_meta(example, dims: dict[int, str], kept: list[str], note: str) -> dict:
    """What engine.json records about the shapes an engine graph serves: the dynamic dimensions,
    the row's note, and every input's shape (None where dynamic)."""
    free = {i for i, name in dims.items() if name in kept}
    return {"dynamic": kept, "serves": note,
            "input_shapes": [[None if i in free else n for i, n in enumerate(t.shape)] for t in example.tensors()]}


def shape_mismatch(fixed: list[list], flat) -> str | None:
    """Which input does not have the shape a static engine graph was built for, or None."""
    if len(flat) != len(fixed):
        return f"{len(flat)} input tensors, the graph takes {len(fixed)}"
    for i, (want, t) in enumerate(zip(fixed, flat)):
        if len(want) != t.dim() or any(w is not None and w != n for w, n in zip(want, t.shape)):
            return f"input {i} has shape {tuple(t.shape)}, the graph takes {tuple('*' if w is None else w for w in want)}"
    return None


# -- layers kept in float (the sensitivity fallback's `skip`) ------------------------------------

def quantizable_layers(model: nn.Module) -> list[str]:
    """The module names of the model's Conv/Linear layers: what an engine's INT8 quantizes and
    what `skip` patterns name."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [n for n, m in model.named_modules() if n and isinstance(m, kinds)]


def resolve_skip(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """The Conv/Linear layers the fnmatch `patterns` name (a pattern matching none is an error)."""
    from .quant.common import match_names

    return match_names(quantizable_layers(model), patterns, "Conv/Linear layer")

# -- the engine model ----------------------------------------------------------------------------

class EngineModule(nn.Module):
    """A model served by an engine from the bytes of its files (buffers: the state dict, and so
    the size torchslim reports, is the artifact).

    `meta` is JSON: the engine, how to call it (options, thread count), the input shapes it serves
    and the output structure (serialized pytree specs). Subclasses build their runner in `build`
    and map a flat list of input tensors to a flat list of output tensors in `run`."""

    engine = ""
    registry: dict[str, type["EngineModule"]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        EngineModule.registry[cls.engine] = cls

    def __init__(self, files: dict[str, bytes], meta: dict):
        super().__init__()
        self.names = list(files)
        for i, data in enumerate(files.values()):
            self.register_buffer(f"file{i}", torch.frombuffer(bytearray(data), dtype=torch.uint8), persistent=True)
        self.meta = dict(meta, engine=self.engine, files=self.names)
        self.init_runner()

    def init_runner(self) -> None:
        self.out_tree = pytree.treespec_loads(self.meta["out_spec"])
        self.consts = {i: v for i, v in self.meta.get("out_consts", [])}
        self.single = self.out_tree.is_leaf() and not self.consts
        self.runner = self.build()

    def file(self, name: str) -> bytes:
        return getattr(self, f"file{self.names.index(name)}").numpy().tobytes()

    def build(self):
        raise NotImplementedError

    def run(self, flat: list[torch.Tensor]) -> list:
        raise NotImplementedError

    def forward(self, *args, **kwargs):
        # fast path (the common call: positional tensors in, one tensor out) keeps the per-call cost
        # of the wrapper to a few microseconds; pytree otherwise
        if not kwargs and all(type(a) is torch.Tensor for a in args):
            flat = args
        else:
            flat = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        try:
            outs = self.run(flat)
        except Exception as e:
            raise self.explain(e, flat) from e
        if self.single and len(outs) == 1:
            return outs[0]
        if len(outs) != self.out_tree.num_leaves - len(self.consts):
            raise RuntimeError(f"the {self.engine} graph returns {len(outs)} tensor(s), the model "
                               f"{self.out_tree.num_leaves - len(self.consts)}")
        it = iter(outs)
        leaves = [self.consts[i] if i in self.consts else next(it) for i in range(self.out_tree.num_leaves)]
        return pytree.tree_unflatten(leaves, self.out_tree)

    def explain(self, e: Exception, flat) -> Exception:
        """The engine's error, naming the shapes the graph serves where it was exported static."""
        serves = self.meta.get("serves", "")
        if not serves.startswith("serves"):
            return e
        got = ", ".join(str(tuple(t.shape)) for t in flat)
        return RuntimeError(f"this {self.engine} model {serves}; called with {got}: {type(e).__name__}: {str(e)[:200]}")

    def train(self, mode: bool = True):
        self.training = mode  # an engine graph is inference-only
        return self

    def __getstate__(self):  # deepcopy/pickle: the runner is rebuilt from the bytes
        state = dict(self.__dict__)
        state.pop("runner", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.runner = self.build()


class AotiModule(EngineModule):
    """An AOTInductor package (model.pt2), loaded with torch._inductor.aoti_load_package."""

    engine = "aoti"

    def build(self):
        # a package compiled for static shapes does not check them (it computes garbage): check here
        static = self.meta.get("serves", "").startswith("serves") and "input_shapes" in self.meta
        self.fixed = self.meta["input_shapes"] if static else None
        with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp:
            path = os.path.join(tmp, "model.pt2")
            with open(path, "wb") as f:
                f.write(self.file("model.pt2"))
            return torch._inductor.aoti_load_package(path)  # extracts what it needs; the file can go

    def forward(self, *args, **kwargs):
        if self.fixed is not None:
            flat = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            wrong = shape_mismatch(self.fixed, flat)
            if wrong:
                raise RuntimeError(f"this AOTInductor package {self.meta['serves']}: {wrong}")
        try:
            return self.runner(*args, **kwargs)  # the package keeps the original input/output structure
        except Exception as e:
            raise self.explain(e, [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]) from e


class OrtModule(EngineModule):
    """An ONNX model (model.onnx) run by an ONNX Runtime CPU InferenceSession."""

    engine = "onnxruntime"

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


class OpenVinoModule(EngineModule):
    """An OpenVINO IR (model.xml + model.bin) compiled for the CPU plugin."""

    engine = "openvino"

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


def out_spec(model: nn.Module, example) -> dict:
    """How to rebuild the model's outputs from the engine's output tensors: the serialized pytree
    spec (dict/tuple/tensor) and the non-tensor leaves as constants (exporters drop them)."""
    with torch.no_grad():
        out = example(model)
    leaves, spec = pytree.tree_flatten(out)
    consts = [[i, v] for i, v in enumerate(leaves) if not isinstance(v, torch.Tensor)]
    if any(not isinstance(v, (int, float, str, bool, type(None))) for _, v in consts):
        raise RuntimeError("the model returns non-tensor values an engine cannot reproduce")
    return {"out_spec": pytree.treespec_dumps(spec), "out_consts": consts}


def find(model: nn.Module | None) -> EngineModule | None:
    return model if isinstance(model, EngineModule) else None


def build_and_call(model: EngineModule, call: Callable[[], Any]) -> Callable[[], Any]:
    """For measure.peak_memory: an engine allocates its arenas and its own copy of the weights when
    its session is built and keeps them, so timing the calls of a built session shows no rise (0 B,
    which --objective memory would prefer). Drops the session now; the returned function builds a new
    one and calls it, so the measurement sees what serving the engine costs on top of the model."""
    import gc

    model.runner = None
    gc.collect()

    def fn():
        model.runner = model.build()
        return call()
    return fn


def save(folder: str, model: EngineModule) -> dict:
    """Write the engine's files and engine.json into `folder`; returns the manifest entry."""
    for name in model.names:
        data = model.file(name)
        atomic_write(os.path.join(folder, name), lambda f, d=data: f.write(d))
    write_json(os.path.join(folder, META), model.meta)
    return {"engine": model.engine, "files": model.names, "meta": META, "deploy": model.names[0]}


def load(folder: str) -> EngineModule:
    """The engine model saved in `folder` (no model code, no torchslim recipe re-applied)."""
    from .errors import SlimError

    with open(os.path.join(folder, META), encoding="utf-8") as f:
        meta = json.load(f)
    cls = EngineModule.registry.get(meta.get("engine"))
    if cls is None:
        raise SlimError(f"'{folder}' holds a model for the unknown engine {meta.get('engine')!r}",
                        f"known engines: {', '.join(EngineModule.registry)}")
    reason = missing(*{"onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}.get(meta["engine"], ()))
    if reason:
        raise SlimError(f"'{folder}' holds a {meta['engine']} model and {meta['engine']} is not installed", reason)
    files = {}
    for name in meta["files"]:
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return cls(files, meta)


def serving_lines(meta: dict, folder: str) -> str:
    """A few lines that serve the saved artifact without torchslim (for reproduce.py)."""
    engine = meta.get("engine")
    path = os.path.join(folder, meta["files"][0])
    threads = meta.get("threads", 1)
    if engine == "aoti":
        return (f"model = torch._inductor.aoti_load_package({path!r})\n"
                "with torch.no_grad():\n    out = model(*example_args)  # same inputs and outputs as the original model\n")
    if engine == "onnxruntime":
        cfg = "".join(f"so.add_session_config_entry({k!r}, {v!r})\n" for k, v in meta.get("config_entries", {}).items())
        return ("import onnxruntime as ort\n"
                "so = ort.SessionOptions()\n"
                "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
                f"so.intra_op_num_threads, so.inter_op_num_threads = {threads}, 1\n{cfg}"
                f"sess = ort.InferenceSession({path!r}, so, providers=['CPUExecutionProvider'])\n"
                "outs = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), example_args)})\n")
    if engine == "openvino":
        cfg = meta.get("config", {})
        return ("import openvino as ov\n"
                f"compiled = ov.Core().compile_model({path!r}, 'CPU', {cfg!r})\n"
                "outs = compiled([a.numpy() for a in example_args])  # a dict: output port -> numpy array\n")
    return ""


def deploy_line(folder: str) -> str:
    """What the CLI tells the user to deploy for an engine recipe's saved model."""
    with open(os.path.join(folder, META), encoding="utf-8") as f:
        meta = json.load(f)
    path = os.path.join(folder, meta["files"][0])
    how = {"aoti": f"torch._inductor.aoti_load_package('{path}') (C++: torch::inductor::AOTIModelPackageLoader)",
           "onnxruntime": f"onnxruntime.InferenceSession('{path}') with the session options in {os.path.join(folder, META)}",
           "openvino": f"openvino.Core().compile_model('{path}', 'CPU', config) with the config in {os.path.join(folder, META)}"}
    return f"deploy {path}: serve it without torchslim with {how.get(meta['engine'], meta['engine'])} (see reproduce.py)"
