"""The short Python program that reproduces a run's chosen model."""
from __future__ import annotations

import pprint

from .techniques import config_from_dict


def snippet(run) -> str:
    """Python source reproducing the chosen recipe of `run` (a RunResult), or '' if none was chosen."""
    chosen = next((r for r in run.recipes if r.name == run.chosen), None)
    if chosen is None:
        return ""
    spec = run.workload.get("spec")
    src = run.config.get("out")
    steps = pprint.pformat(chosen.steps, indent=4, sort_dicts=False)  # Python literals (True, not true)
    load_line = (f"workload = torchslim.load_model({spec!r}{_shape_args(run)})" if spec
                 else "workload = torchslim.Workload(model=MyModel(), example=...)  # your model and inputs")
    calib = ""
    if any(config_from_dict(s).needs_calibration for s in chosen.steps):
        # static quantization calibrates: on the --calib-data it was given, else on the workload's own data
        given = run.workload.get("calib_data")
        calib = f", calibration={given!r}" if given else ", calibration=workload.calibration"
    return f'''"""Reproduce torchslim's chosen recipe '{chosen.name}' ({chosen.speedup:.2f}x vs FP32 eager here)."""
import torch
import torchslim

# 1) Load the saved model (weights + recipe, checked against the saved outputs):
model = torchslim.load({(src + "/model") if src else "OUT/model"!r})

# 2) Or rebuild it from the original model:
{load_line}
recipe = torchslim.Recipe.from_list({steps})
model = torchslim.apply(workload.model.eval(), recipe, workload.example{calib})

with torch.no_grad():
    out = workload.example(model)  # call it like the original model
''' + _serve_without_torchslim(run)


def _serve_without_torchslim(run) -> str:
    """For an engine recipe: the few lines that serve its saved file with the engine alone."""
    import json
    import os

    meta_path = os.path.join(run.artifact, "engine.json") if getattr(run, "artifact", None) else None
    if not meta_path or not os.path.isfile(meta_path):
        return ""
    from .engines import serving_lines

    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    return ("\n# 3) Or serve the saved engine file without torchslim (example_args: the model's input tensors):\n"
            "example_args = workload.example.args\n" + serving_lines(meta, run.artifact))


def _shape_args(run) -> str:
    args = [f", {k}={run.workload[k]!r}" for k in ("input_shape", "dtype") if run.workload.get(k)]
    return "".join(args)
