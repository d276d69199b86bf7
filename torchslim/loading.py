"""Turn a model spec (file, module, Hugging Face folder, TorchScript, torch.export) into a Workload."""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from typing import Any

import torch
import torch.nn as nn

from .errors import SlimError, first_line, load_reason
from .hf import HFForward, HFModel, load_hf  # noqa: F401 - HFModel and load_hf are loading's API too
from .hf import example_inputs as hf_example
from .inputs import Example, as_example, parse_dtype, parse_shapes, random_example
from .workload import Workload, eval_mode

FORMATS = """model specs:
  path/to/file.py:factory   a Python file and a function in it returning an nn.Module,
                            (module, example_inputs) or a torchslim Workload
  package.module:factory    the same, from an importable module
  hf:DIR                    a Hugging Face model folder (offline; needs the 'hf' extra): --input-shape
                            BATCHxSEQ for token models, BATCHxCxHxW for vision models
  model.pt / model.ts       a TorchScript file (torch.jit.save)
  model.pt2                 a torch.export program (torch.export.save)"""


def load_model(
    spec: str,
    *,
    input_shape: str | None = None,
    dtype: str | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    need_example: bool = True,
) -> Workload:
    """Load `spec` (see FORMATS) and its example inputs; optionally load a state dict from `weights`."""
    if not spec or not isinstance(spec, str):
        raise SlimError("no model spec given", FORMATS)
    if spec.startswith("hf:"):
        wl = _load_hf(spec[3:], input_shape)
    elif os.path.isfile(spec):
        wl = _load_file(spec, trust_pickle)
    elif ":" in spec:
        wl = _load_factory(spec)
    elif spec.endswith((".py", ".pt", ".pt2", ".ts", ".pth", ".jit")) or os.sep in spec:
        raise SlimError(f"model file '{spec}' does not exist", "check the path")
    else:
        raise SlimError(f"unknown model spec '{spec}'", FORMATS)

    if weights:
        _load_weights(wl.model, weights)
    if input_shape is not None and isinstance(wl.model, HFForward):  # token ids in its vocabulary
        wl.example = hf_example(wl.model.model, input_shape, with_mask=False)
    elif input_shape is not None and not spec.startswith("hf:"):
        shapes = parse_shapes(input_shape)
        dtypes = [parse_dtype(d) for d in (dtype or "float32").split(",")]
        wl.example = random_example(shapes, dtypes)
    elif wl.example is None and need_example:
        raise SlimError(f"no example inputs for '{spec}'",
                        "pass --input-shape (e.g. 8x3x224x224), or return (model, example_inputs) from the factory")
    wl.model = eval_mode(wl.model)
    wl.spec = wl.spec or spec
    wl.source.update({k: v for k, v in dict(input_shape=input_shape, dtype=dtype).items() if v})
    return wl


# -- Python factories -------------------------------------------------------------------------

def _load_factory(spec: str) -> Workload:
    fn, spec = load_factory_fn(spec, with_spec=True)
    fn_name = spec.rpartition(":")[2]
    made = call_user(fn, f"factory '{fn_name}'", "fix the factory (run with --debug for the traceback)")
    return _as_workload(made, spec, fn_name)


def call_user(fn, what: str, fix: str):
    """fn() for a user's factory: its SlimErrors pass through, anything else becomes one
    SlimError naming `what` (e.g. "factory 'build'")."""
    try:
        return fn()
    except SlimError:
        raise
    except Exception as e:  # noqa: BLE001 - user code
        raise SlimError(f"{what} raised {type(e).__name__}: {e}", fix) from e


def load_factory_fn(spec: str, with_spec: bool = False):
    """The callable named by file.py:fn or package.module:fn (and the spec with an absolute path)."""
    target, _, fn_name = spec.rpartition(":")
    if not fn_name:
        raise SlimError(f"model spec '{spec}' names no factory", "write it as path/to/file.py:factory or package.module:factory")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise SlimError(f"model file '{target}' does not exist", "check the path")
        mod = _import_file(target)
        spec = f"{os.path.abspath(target)}:{fn_name}"
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise SlimError(f"cannot import module '{target}': {e}", "check the name, or give a path/to/file.py:factory") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        have = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))[:12]
        raise SlimError(f"'{target}' has no function '{fn_name}'", f"callables there: {', '.join(have) or 'none'}")
    return (fn, spec) if with_spec else fn


def _import_file(path: str):
    name = "torchslim_user_" + os.path.splitext(os.path.basename(path))[0]
    mspec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[name] = mod  # dataclasses and pickling look the module up by name
    try:
        mspec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - user code
        raise SlimError(f"importing '{path}' raised {type(e).__name__}: {e}", "fix the file (run with --debug for the traceback)") from e
    return mod


def _as_workload(made: Any, spec: str, name: str) -> Workload:
    if isinstance(made, Workload):
        made.spec = made.spec or spec
        return made
    if isinstance(made, nn.Module):
        return Workload(model=made, example=None, name=name, spec=spec)
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return Workload(model=made[0], example=as_example(made[1]), name=name, spec=spec)
    raise SlimError(f"factory '{name}' returned {type(made).__name__}",
                    "return an nn.Module, a (module, example_inputs) pair, or a torchslim.Workload")


# -- Files: TorchScript, torch.export, pickles -------------------------------------------------

def _load_file(path: str, trust_pickle: bool) -> Workload:
    name = os.path.splitext(os.path.basename(path))[0]
    if path.endswith(".py"):
        raise SlimError(f"'{path}' is a Python file but no factory was named", f"write it as {path}:factory")
    if _is_gguf(path):
        raise SlimError(f"'{path}' is a GGUF file: a llama.cpp language model, not a PyTorch module",
                        f"optimize it as a text-generation model: torchslim optimize --task text-generation --model {path}")
    kind = _archive_kind(path)
    if kind == "export":
        try:
            ep = torch.export.load(path)
        except Exception as e:  # noqa: BLE001
            raise SlimError(f"cannot load torch.export program '{path}': {e}", "re-save it with torch.export.save on this torch version") from e
        example = None
        if getattr(ep, "example_inputs", None) is not None:
            args, kwargs = ep.example_inputs
            example = Example(tuple(args), dict(kwargs))
        return Workload(model=ep.module(), example=example, name=name, source={"format": "torch.export"})
    if kind == "torchscript":
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise SlimError(f"cannot load TorchScript file '{path}': {e}", "re-save it with torch.jit.save") from e
        return Workload(model=model, example=None, name=name, source={"format": "torchscript"})
    return _load_pickle(path, name, trust_pickle)


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _archive_kind(path: str) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith(("serialized_exported_program.json", "archive_format")) or "/models/" in n for n in names):
        return "export"
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    return None


def _load_pickle(path: str, name: str, trust_pickle: bool) -> Workload:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise SlimError(f"'{path}' holds pickled Python objects, which can run arbitrary code when loaded",
                        "pass --trust-pickle if you trust this file, or give the architecture as file.py:factory with --weights FILE") from e
    except Exception as e:  # noqa: BLE001
        raise SlimError(f"cannot read '{path}' as a PyTorch file: {first_line(e)}", FORMATS) from e
    if isinstance(obj, nn.Module):
        return Workload(model=obj, example=None, name=name, source={"format": "pickle"})
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SlimError(f"'{path}' is a state dict (weights only), not a model",
                        "give the architecture as file.py:factory and pass this file as --weights")
    raise SlimError(f"'{path}' holds a {type(obj).__name__}, not a model", FORMATS)


def _load_weights(model: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise SlimError(f"weights file '{path}' does not exist", "check the path")
    state = read_safely(path, "weights", "save them with torch.save(model.state_dict(), path)")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise SlimError(f"weights '{path}' do not match the model: {' '.join(first[:3])[:400]}",
                        "check that the factory builds the same architecture the weights were trained with") from e


# -- Hugging Face ------------------------------------------------------------------------------

def _load_hf(path: str, input_shape: str | None) -> Workload:
    hf = load_hf(path)
    return Workload(model=HFModel(hf), example=hf_example(hf, input_shape), name=os.path.basename(os.path.normpath(path)),
                    spec=f"hf:{os.path.abspath(path)}", source={"format": "huggingface"})


# -- example inputs and task metrics from files --------------------------------------------------

def load_inputs(path: str) -> Example:
    """Example inputs saved with torch.save: a tensor, a tuple/list of tensors, or a dict of them."""
    if not os.path.isfile(path):
        raise SlimError(f"inputs file '{path}' does not exist", "save them with torch.save(tensor_or_tuple_or_dict, path)")
    return as_example(read_safely(path, "inputs", "save plain tensors (a tensor, tuple or dict) with torch.save"))


def read_safely(path: str, what: str, fix: str):
    """torch.load with weights_only=True (tensors and plain containers, no code), or one clear error."""
    import warnings

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SlimError(f"cannot read {what} '{path}' safely: {load_reason(e)}", fix) from e


def load_evaluate(spec: str):
    """`--eval file.py:fn`: returns (evaluate, metric name). fn(model) may return a number or a dict."""
    fn = load_factory_fn(spec)
    name = spec.rpartition(":")[2]
    state = {}

    def evaluate(model):
        try:
            got = fn(model)
        except Exception as e:  # noqa: BLE001 - user code
            raise SlimError(f"the --eval function '{name}' raised {type(e).__name__}: {e}", "fix it (run with --debug for the traceback)") from e
        if isinstance(got, dict):
            if not got:
                raise SlimError(f"the --eval function '{name}' returned an empty dict", "return a number or {'metric': value}")
            state.setdefault("key", next(iter(got)))
            return {name: float(got[state["key"]]), **{k: float(v) for k, v in got.items()}}
        try:
            return {name: float(got)}
        except (TypeError, ValueError):
            raise SlimError(f"the --eval function '{name}' returned {type(got).__name__}", "return a number or a dict of numbers") from None

    return evaluate, name
