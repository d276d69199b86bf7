"""The base of every deployment engine: the model as an engine's files, run from torch tensors to
torch tensors (`EngineModule`, one subclass per engine in its own file, registered by its name),
saved and reloaded without model code, the extra each engine needs, and what a caller asks of an
engine without naming it (its serving lines, its deploy line)."""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import SlimError
from ..fileio import atomic_write, write_json

META = "engine.json"
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "openvino", "llama_cpp": "llamacpp"}


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


class PerConfig:
    """A technique-metadata flag (like the `lossy` ClassVar) whose value depends on the config's
    fields: `fn(config)` on an instance, `default` on the class."""

    def __init__(self, fn, default: bool = False):
        self.fn, self.default = fn, default

    def __get__(self, obj, owner=None):
        return self.default if obj is None else self.fn(obj)


# -- the engine model ----------------------------------------------------------------------------

class EngineModule(nn.Module):
    """A model served by an engine from the bytes of its files (buffers: the state dict, and so
    the size torchslim reports, is the artifact).

    `meta` is JSON: the engine, how to call it (options, thread count), the input shapes it serves
    and the output structure (serialized pytree specs). Subclasses build their runner in `build`
    and map a flat list of input tensors to a flat list of output tensors in `run`; they name the
    modules the engine needs to run (`needs`), and say how to serve its saved file without torchslim
    (`serving_lines`, `deploy_how`)."""

    engine = ""
    needs: tuple[str, ...] = ()  # Python modules the engine needs to run its file (checked by `missing`)
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
        try:
            self.out_tree = pytree.treespec_loads(self.meta["out_spec"])
        except NotImplementedError:  # the output's class is not registered in this process: a tuple of tensors
            self.out_tree = None
        self.consts = {i: v for i, v in self.meta.get("out_consts", [])}
        self.single = self.out_tree is not None and self.out_tree.is_leaf() and not self.consts
        self.runner = self.build()

    @classmethod
    def missing(cls) -> str | None:
        """None if this engine can run here, else what to install."""
        return missing(*cls.needs)

    @classmethod
    def serving_lines(cls, meta: dict, path: str) -> str:
        """A few lines of Python that serve the saved file at `path` without torchslim (reproduce.py);
        `example_args` holds the model's input tensors."""
        return ""

    @classmethod
    def deploy_how(cls, path: str, meta_path: str) -> str:
        """How to serve the file at `path` without torchslim, in a phrase (the CLI's deploy line)."""
        return cls.engine

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
        return self.rebuild(outs)

    def rebuild(self, outs: list):
        """The model's output structure (its pytree spec, non-tensor leaves as saved constants) from the
        engine's flat output tensors."""
        if self.single and len(outs) == 1:
            return outs[0]
        if self.out_tree is None:
            return tuple(outs)
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
    with open(os.path.join(folder, META), encoding="utf-8") as f:
        meta = json.load(f)
    cls = EngineModule.registry.get(meta.get("engine"))
    if cls is None:
        raise SlimError(f"'{folder}' holds a model for the unknown engine {meta.get('engine')!r}",
                        f"known engines: {', '.join(EngineModule.registry)}")
    reason = cls.missing()
    if reason:
        raise SlimError(f"'{folder}' holds a {meta['engine']} model and {meta['engine']} is not installed", reason)
    files = {}
    for name in meta["files"]:
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return cls(files, meta)


def serving_lines(meta: dict, folder: str) -> str:
    """A few lines that serve the saved artifact without torchslim (for reproduce.py)."""
    cls = EngineModule.registry.get(meta.get("engine"))
    return cls.serving_lines(meta, os.path.join(folder, meta["files"][0])) if cls else ""


def deploy_line(folder: str) -> str:
    """What the CLI tells the user to deploy for an engine recipe's saved model."""
    with open(os.path.join(folder, META), encoding="utf-8") as f:
        meta = json.load(f)
    path = os.path.join(folder, meta["files"][0])
    cls = EngineModule.registry.get(meta["engine"])
    how = cls.deploy_how(path, os.path.join(folder, META)) if cls else meta["engine"]
    return f"deploy {path}: serve it without torchslim with {how} (see reproduce.py)"
