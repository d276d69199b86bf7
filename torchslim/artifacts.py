"""Save the chosen model with its recipe; load it back to a model with identical outputs."""

# Like optimum-quanto's quantization map beside safetensors: we store the FP32 weights, the recipe
# (JSON) and how to rebuild the architecture, and re-apply the recipe on load. Every technique is
# deterministic, so the reloaded model reproduces the saved reference outputs (checked on load).
from __future__ import annotations

import datetime
import json
import os
import sys
import warnings

import torch
import torch.nn as nn

from . import artifact_files, engines
from .device import host_mismatch, host_record
from .artifact_files import pack, unpack
from .version import __version__
from .errors import SlimError, load_reason
from .fidelity import compare, output_tensors
from .techniques.torchscript import script_module
from .fileio import atomic_write, write_json
from .inputs import Example
from .recipes import Recipe, apply
from .search.workload_type import WorkloadType
from .techniques import Context
from .workload import eval_mode

MANIFEST = artifact_files.MANIFEST
TORCHSCRIPT = "model.torchscript.pt"
FORMAT_VERSION = 1


def save(folder: str, base_model: nn.Module, recipe: Recipe, example: Example, *, spec: str | None,
         source: dict | None = None, reference_output=None, calibration: list[Example] | None = None,
         optimized: nn.Module | None = None, keep_float: bool = False, candidates: list[dict] | None = None) -> str:
    """Write `folder`/{torchslim.json, weights.pt, example.pt, reference.pt[, calibration.pt]}.

    Recipes that calibrate (static quantization) get their calibration inputs saved too, so that
    re-applying the recipe on load reproduces the same scales and the same outputs. When the
    `optimized` model is a TorchScript module (static-int8-ts[-sr], torchscript-freeze), it is also saved
    as TORCHSCRIPT: it loads with torch.jit.load (or libtorch's torch::jit::load), no torchslim needed.
    An engine recipe's model (engines/) is saved as its engine's file(s) + engine.json; load()
    serves that file.

    Lean by default: an engine file loads by itself, so its folder holds no FP32 weights and no
    calibration inputs unless `keep_float` (to rebuild or recalibrate it later); calibration inputs
    kept are stored compactly and losslessly (artifact_files.pack). The manifest lists every file
    with its size, role and SHA-256, which load() checks before reading any of them.
    """
    os.makedirs(folder, exist_ok=True)
    engine = engines.save(folder, optimized) if engines.find(optimized) is not None else None
    torchscript = None
    scripted = script_module(optimized)
    if scripted is not None:
        torchscript = TORCHSCRIPT
        atomic_write(os.path.join(folder, TORCHSCRIPT), lambda f: torch.jit.save(scripted, f))
    lean = engine is not None and not keep_float  # the engine file is the model: nothing to rebuild from
    if not lean:
        state = {k: v.detach().cpu().clone() for k, v in base_model.state_dict().items()}
        atomic_write(os.path.join(folder, "weights.pt"), lambda f: torch.save(state, f))
    atomic_write(os.path.join(folder, "example.pt"), lambda f: torch.save(_record(example), f))
    calib_info = None
    if calibration is not None:
        batches = [pack(_record(e)) for e in calibration]
        calib_info = {"batches": len(batches), "samples": sum(e.batch_size for e in calibration),
                      "source": (source or {}).get("calib_data"), "kept": not lean}
        if not lean:
            atomic_write(os.path.join(folder, "calibration.pt"), lambda f: torch.save(batches, f))
    if reference_output is not None:
        refs = [t.detach().float().cpu() for t in output_tensors(reference_output)]
        atomic_write(os.path.join(folder, "reference.pt"), lambda f: torch.save(refs, f))
    write_json(os.path.join(folder, MANIFEST), {
        "format_version": FORMAT_VERSION,
        "torchslim": __version__,
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": spec,
        "source": source or {},
        "recipe": recipe.to_list(),
        "recipe_name": recipe.name,
        "torchscript": torchscript,
        "engine": engine,  # the engine file to deploy (model.onnx, model.xml/.bin, model.pt2), or None
        "host": host_record(),  # where the recipe was chosen: load() warns when the decisive CPU features differ
        "candidates": candidates,  # the recipes that passed there, best first, with their measured ratios
        "calibration": calib_info,  # what the recipe was calibrated on; "kept": whether calibration.pt holds it
        "files": artifact_files.describe(folder, engine, torchscript),  # {name: {bytes, sha256, role}}
    })
    return folder


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise SlimError(f"'{folder}' is not a torchslim model folder (no {MANIFEST})", "give the folder `torchslim optimize` wrote under --out (its model/ subfolder)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise SlimError(f"'{path}' cannot be read as JSON: {e}", "save the model again with torchslim optimize") from None
    if not isinstance(manifest, dict):
        raise SlimError(f"'{path}' is not a torchslim manifest (a JSON object)", "save the model again with torchslim optimize")
    if not isinstance(manifest.get("format_version", 0), int) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SlimError(f"'{folder}' was written by a newer torchslim ({manifest.get('torchslim')})", "upgrade torchslim")
    artifact_files.verify(folder, manifest)
    return manifest


def load(folder: str, model: nn.Module | None = None, *, device: str = "cpu", verify: bool = True,
         trust_pickle: bool = False) -> nn.Module:
    """Rebuild the saved model: architecture from its spec (or `model`), FP32 weights, then the recipe.

    With verify=True (the default) the rebuilt model is run on the saved example and checked
    against the saved reference outputs; a mismatch raises instead of serving a wrong model.
    """
    from .loading import load_model

    manifest = read_manifest(folder)
    kind = WorkloadType.find(manifest.get("task"))
    if kind is not None:  # a workload type's own folder (text generation): it reloads it
        return kind.load_saved(folder, device=device, verify=verify)
    mismatch = host_mismatch(manifest.get("host"))
    if mismatch:
        print(f"torchslim: warning: {mismatch}: '{manifest.get('recipe_name')}' may be slower or less accurate here; "
              "run torchslim optimize on this host to choose again", file=sys.stderr)
    if manifest.get("engine"):  # an engine recipe: its saved file is the model (no architecture needed)
        optimized = engines.load(folder)
        if verify and os.path.isfile(os.path.join(folder, "reference.pt")):
            ex = _read(folder, "example.pt")
            _verify(optimized, _example(ex), _read(folder, "reference.pt"),
                    manifest["recipe_name"])
        return optimized
    if model is None:
        if not manifest.get("spec"):
            raise SlimError("this model was optimized from an in-memory module, so its architecture is not recorded",
                            "pass the architecture: torchslim.load(folder, model=MyModel())")
        model = load_model(manifest["spec"], trust_pickle=trust_pickle or manifest["source"].get("format") == "pickle",
                           need_example=False).model
    if not os.path.isfile(os.path.join(folder, "weights.pt")):
        raise SlimError(f"'{folder}' has no weights.pt to re-apply its recipe to", "save the model again with torchslim optimize")
    state = _read(folder, "weights.pt")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise SlimError(f"the saved weights do not fit the rebuilt architecture: {str(e).splitlines()[0]}",
                        "the model code changed since it was saved; pass the original architecture as model=") from e
    dev = torch.device(device)
    model = eval_mode(model.to(dev))
    ex = _read(folder, "example.pt")
    example = _example(ex).to(dev)
    ctx = Context(device=dev, example=example, calibration=_saved_calibration(folder, dev))
    model = apply(model, Recipe.from_list(manifest["recipe"]), ctx)
    if verify and os.path.isfile(os.path.join(folder, "reference.pt")):
        _verify(model, example, _read(folder, "reference.pt"), manifest["recipe_name"])
    return model


def saved_inputs(folder: str):
    """(the saved example, a calibration function over the saved calibration inputs or None)."""
    return _example(_read(folder, "example.pt")), _saved_calibration(folder, torch.device("cpu"))


def saved_weights(folder: str) -> dict:
    return _read(folder, "weights.pt")


def saved_reference(folder: str) -> list[torch.Tensor]:
    return _read(folder, "reference.pt")


def _saved_calibration(folder: str, dev: torch.device):
    path = os.path.join(folder, "calibration.pt")
    if not os.path.isfile(path):
        return None
    batches = unpack(_read(folder, "calibration.pt"))
    return lambda: [_example(b).to(dev) for b in batches]


def _read(folder: str, name: str):
    """A saved tensor file, read with weights_only=True: a file holding anything else (an arbitrary
    pickle) is refused with what is wrong, never executed."""
    path = os.path.join(folder, name)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a truncated zip, a missing file: all say the same
        raise SlimError(f"'{path}' cannot be read as saved tensors: {load_reason(e)}",
                        "the folder is damaged or was edited; copy it again or save the model again") from None


def _record(example: Example) -> dict:
    """An Example as plain containers, so torch.load(weights_only=True) can read it back; tensors
    cloned (a view, e.g. a slice of a whole data set, would save its whole base storage)."""
    example = example.map(lambda t: t.detach().clone())
    return {"args": list(example.args), "kwargs": example.kwargs}


def _example(record: dict) -> Example:
    return Example(tuple(record["args"]), record["kwargs"])


def _verify(model: nn.Module, example: Example, refs: list[torch.Tensor], name: str) -> None:
    with torch.no_grad():
        out = example(model)
    fid = compare(refs, [t.float().cpu() for t in output_tensors(out)])
    if not fid.finite or fid.min_cosine < 0.9999:
        raise SlimError(f"the reloaded '{name}' model does not reproduce its saved outputs (min cosine {fid.min_cosine:.5f})",
                        "the environment differs from where it was saved (torch version, CPU); re-run torchslim optimize here")
