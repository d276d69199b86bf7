"""PyTorch-side methods: FP32 eager (the baseline), torchslim's chosen recipe, torchao's INT8
configs used directly (as its README shows them: quantize_ with defaults, then torch.compile), and
PyTorch's own eager INT8 (torch.ao.quantization: quantize_dynamic, FX static) while torch ships it."""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from benchmarks.peers.common import Env, Prepared, method, torch_prepared


def _fresh(bundle) -> nn.Module:
    return copy.deepcopy(bundle.model).eval()


@method("fp32-eager", "PyTorch", "fp32")
def fp32_eager(bundle, env: Env) -> Prepared:
    return torch_prepared(bundle.model.eval(), ["torch.no_grad()"])


def _compiled(model: nn.Module, note: str) -> Prepared:
    compiled = torch.compile(model)
    return torch_prepared(compiled, [note], size_of=model)


def _torchao(bundle, config_name: str, note: str) -> Prepared:
    """torchao used directly: quantize_(config) on a fresh copy, then torch.compile."""
    import torchao.quantization as q

    model = _fresh(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.quantize_(model, getattr(q, config_name)())
    return _compiled(model, f"quantize_({config_name}()) + torch.compile; {note}")


@method("torchao-int8-dyn+compile", "torchao", "int8-dynamic")
def torchao_int8_dynamic(bundle, env: Env) -> Prepared:
    return _torchao(bundle, "Int8DynamicActivationInt8WeightConfig", "nn.Linear only")


@method("torchao-int8-wo+compile", "torchao", "int8-weight-only")
def torchao_int8_weight_only(bundle, env: Env) -> Prepared:
    return _torchao(bundle, "Int8WeightOnlyConfig", "nn.Linear only, FP32 activations")


def _torch_ao():
    q = getattr(torch, "ao", None) and getattr(torch.ao, "quantization", None)
    if q is None:
        raise RuntimeError("this torch no longer ships torch.ao.quantization")
    return q


@method("torch.ao-quantize_dynamic", "PyTorch (torch.ao)", "int8-dynamic")
def torch_quantize_dynamic(bundle, env: Env) -> Prepared:
    q = _torch_ao()
    if not hasattr(q, "quantize_dynamic"):
        raise RuntimeError("torch.ao.quantization.quantize_dynamic is gone from this torch")
    torch.backends.quantized.engine = _engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = q.quantize_dynamic(_fresh(bundle), {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)
    return torch_prepared(model, [f"engine {torch.backends.quantized.engine}; Linear/LSTM/GRU"])


@method("torch.ao-fx-static", "PyTorch (torch.ao)", "int8-static")
def torch_fx_static(bundle, env: Env) -> Prepared:
    _torch_ao()
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:
        raise RuntimeError(f"FX graph mode quantization is gone from this torch ({e})") from None
    engine = _engine()
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(_fresh(bundle), get_default_qconfig_mapping(engine), bundle.example)
        with torch.no_grad():
            for args in bundle.calibration():
                prepared(*args)
        model = convert_fx(prepared)
    return torch_prepared(model, [f"engine {engine}; qconfig mapping '{engine}'; {len(bundle.calibration())} calibration batches"])


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm", "onednn") if e in engines), engines[0])


@method("torchslim", "torchslim", "chosen")
def torchslim_chosen(bundle, env: Env) -> Prepared:
    """The recipe torchslim's `optimize` chose for this case (in its own process), applied afresh."""
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques import Context

    found = env.recipe or {}
    if not found.get("steps"):
        raise RuntimeError(f"torchslim chose no recipe ({found.get('error') or 'every candidate was rejected'})")
    ctx = Context(device=torch.device("cpu"), example=bundle.workload.example, calibration=bundle.workload.calibration)
    model = apply(_fresh(bundle), Recipe.from_list(found["steps"]), ctx)
    prepared = torch_prepared(model, [f"recipe {found['chosen']}"])
    prepared.precision = recipe_precision(found["chosen"])
    if prepared.precision == "fp32" and getattr(model, "meta", {}).get("runs_in") == "bf16":
        prepared.precision = "bf16"  # an OpenVINO recipe at its default precision, on a CPU with BF16
    if getattr(model, "engine", ""):  # an engine recipe: the table says which engine torchslim chose
        prepared.notes.append(f"engine {model.engine} (chosen by optimize among its recipes)")
    return prepared


def recipe_precision(name: str) -> str:
    """The arithmetic a torchslim recipe runs its heavy layers in, from its name."""
    if "static-int8" in name or "int8-static" in name or name == "openvino-int8":
        return "int8-static"
    if "dynamic-int8" in name or "int8-dynamic" in name:
        return "int8-dynamic"
    if "weight-only" in name:
        return "int8-weight-only" if "int8" in name else "int4-weight-only"
    for low in ("bf16", "fp16"):
        if low in name:
            return low
    return "fp32"
