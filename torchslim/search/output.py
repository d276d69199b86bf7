"""What the search writes as it goes (results.json, report.html, reproduce.py, the chosen model)."""
from __future__ import annotations

import os

import torch.nn as nn

from .. import artifacts, validation
from ..fileio import write_json, write_text
from ..recipes import Recipe
from ..results import RecipeResult, RunResult
from ..workload import Workload
from .trial import caller


def write(run: RunResult, config) -> None:
    """Write results.json (and the report) after every step, so an interrupted run keeps its results."""
    if not config.out:
        return
    from ..report import write_html
    from ..snippet import snippet

    d = run.to_dict()
    d["snippet"] = snippet(run)
    write_json(os.path.join(config.out, "results.json"), d)
    write_html(d, os.path.join(config.out, "report.html"))
    if run.chosen:
        write_text(os.path.join(config.out, "reproduce.py"), d["snippet"])


def save(run: RunResult, chosen: RecipeResult, model: nn.Module, workload: Workload, example, config) -> None:
    """Save the chosen recipe's model (and what reloads it) under config.out/model."""
    folder = os.path.join(config.out, "model")
    recipe = Recipe.from_list(chosen.steps)
    calibration = validation.for_recipes(workload)  # what the recipe was calibrated on (held-out batches excluded)
    calib = list(calibration()) if calibration and any(s.needs_calibration for s in recipe.steps) else None
    artifacts.save(folder, workload.model, recipe, workload.example, spec=workload.spec, source=workload.source,
                   reference_output=caller(model, example)(), calibration=calib, optimized=model)
    run.artifact = folder

