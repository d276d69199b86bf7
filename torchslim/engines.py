"""Deployment engines (AOTInductor, ONNX Runtime, OpenVINO) as recipes: what the three share.

An engine recipe turns the model into a file another runtime serves (model.pt2, model.onnx,
model.xml/.bin). `EngineModule` holds that file's bytes (as buffers: the state dict, and so the
size torchslim reports, is the artifact) and runs it from torch tensors to torch tensors with the
original output structure (pytree), so validation, timing and the task metric see an nn.Module
like any other. `save`/`load` write and read the file with an engine.json; `load` needs no model
code. The engines are imported lazily; an absent one is a skip naming its extra.
"""
from __future__ import annotations

import importlib.util
import json
import os

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .fileio import atomic_write, write_json

META = "engine.json"
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "openvino"}


def missing(*modules: str) -> str | None:
    """None if every module imports here, else 'install torchslim[extra]'."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            return f"install torchslim[{EXTRAS.get(m, m)}] (no {m} here)"
    return None


class EngineModule(nn.Module):
    """A model served by an engine from the bytes of its files.

    `meta` is JSON: the engine, how to call it (options, thread count) and the input/output
    structure (serialized pytree specs). Subclasses build their runner in `_build` and map a flat
    list of input tensors to a flat list of output tensors in `_run`."""

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
        self._out_spec = pytree.treespec_loads(meta["out_spec"])
        self._consts = {i: v for i, v in meta.get("out_consts", [])}
        self._single = self._out_spec.is_leaf() and not self._consts
        self._runner = self._build()

    def file(self, name: str) -> bytes:
        return getattr(self, f"file{self.names.index(name)}").numpy().tobytes()

    def _build(self):
        raise NotImplementedError

    def _run(self, flat: list[torch.Tensor]) -> list:
        raise NotImplementedError

    def forward(self, *args, **kwargs):
        # fast path (the common call: positional tensors in, one tensor out) keeps the per-call cost
        # of the wrapper to a few microseconds; pytree otherwise
        if not kwargs and all(type(a) is torch.Tensor for a in args):
            flat = args
        else:
            flat = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = self._run(flat)
        if self._single and len(outs) == 1:
            return outs[0]
        if len(outs) != self._out_spec.num_leaves - len(self._consts):
            raise RuntimeError(f"the {self.engine} graph returns {len(outs)} tensor(s), the model "
                               f"{self._out_spec.num_leaves - len(self._consts)}")
        it = iter(outs)
        leaves = [self._consts[i] if i in self._consts else next(it) for i in range(self._out_spec.num_leaves)]
        return pytree.tree_unflatten(leaves, self._out_spec)

    def train(self, mode: bool = True):
        self.training = mode  # an engine graph is inference-only
        return self

    def __getstate__(self):  # deepcopy/pickle: the runner is rebuilt from the bytes
        state = dict(self.__dict__)
        state.pop("_runner", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._runner = self._build()


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
        import_engine(meta.get("engine"))
        cls = EngineModule.registry.get(meta.get("engine"))
    reason = missing(*{"onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}.get(meta["engine"], ()))
    if reason:
        raise SlimError(f"'{folder}' holds a {meta['engine']} model and {meta['engine']} is not installed", reason)
    files = {}
    for name in meta["files"]:
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return cls(files, meta)


def import_engine(engine: str | None) -> None:
    from .techniques import aoti, openvino, ort  # noqa: F401 - registers the EngineModule subclasses


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


def engine_candidates(device: torch.device) -> list:
    """The engine recipes worth trying on `device` (recipes.candidates appends them, last: their
    preparation, an export and an engine compile, is the slowest). Absent engines are skips."""
    from . import device as dev
    from .recipes import Recipe
    from .techniques import AotiConfig, OpenVinoConfig, OpenVinoInt8Config, OrtConfig, OrtStaticInt8Config, StaticInt8Config

    out = [Recipe((AotiConfig(),))]
    if dev.supports_bf16(device):
        out.append(Recipe((AotiConfig(dtype="bf16"),)))
    if device.type != "cpu":
        return out
    if dev.is_x86():
        out.append(Recipe((StaticInt8Config(), AotiConfig())))
    out += [Recipe((OrtConfig(),)), Recipe((OrtConfig(quantize="dynamic"),)), Recipe((OrtStaticInt8Config(),))]
    out += [Recipe((OpenVinoConfig(),)), Recipe((OpenVinoConfig(precision="fp32"),)), Recipe((OpenVinoInt8Config(),))]
    return out


def deploy_line(folder: str) -> str:
    """What the CLI tells the user to deploy for an engine recipe's saved model."""
    with open(os.path.join(folder, META), encoding="utf-8") as f:
        meta = json.load(f)
    path = os.path.join(folder, meta["files"][0])
    how = {"aoti": f"torch._inductor.aoti_load_package('{path}') (C++: torch::inductor::AOTIModelPackageLoader)",
           "onnxruntime": f"onnxruntime.InferenceSession('{path}') with the session options in {os.path.join(folder, META)}",
           "openvino": f"openvino.Core().compile_model('{path}', 'CPU', config) with the config in {os.path.join(folder, META)}"}
    return f"deploy {path}: serve it without torchslim with {how.get(meta['engine'], meta['engine'])} (see reproduce.py)"
