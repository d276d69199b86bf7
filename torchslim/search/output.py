"""What the search writes as it goes (results.json, report.html, reproduce.py, the chosen model)."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from typing import Callable

import torch.nn as nn

from .. import artifacts, validation
from ..errors import first_line
from ..fileio import replace_folder, staging_folder, write_json, write_text
from ..recipes import Recipe
from ..results import RecipeResult, RunResult, Status
from ..workload import Workload
from .choose import choose, ranked, why
from .trial import caller

RELOAD_TIMEOUT_S = 900  # a recipe that compiles on load (torch.compile) compiles again in the check
_RELOAD_MARK = "torchslim-reload-error: "
# The fresh process: torchslim.load rebuilds the folder and checks its outputs against the saved
# reference (artifacts._verify); any failure comes back as one marked line.
_RELOAD_CHILD = f"""
import sys
try:
    import torchslim
    torchslim.load(sys.argv[1])
except BaseException as e:
    what = getattr(e, "what", None) or (str(e).strip().splitlines() or [""])[0]
    print({_RELOAD_MARK!r} + type(e).__name__ + (": " + what if what else ""), flush=True)
    sys.exit(1)
"""


def write(run: RunResult, config, files: Callable[[RunResult, dict], dict[str, str]] | None = None) -> None:
    """Write results.json and report.html (and the files the workload type adds: `files(run, d)`, its
    `report_files`; by default the forward pass's reproduce.py) after every step, so an interrupted
    run keeps its results. Every workload type's writer: a report that fails to render raises."""
    if not config.out:
        return
    from ..report import write_html

    os.makedirs(config.out, exist_ok=True)
    d = run.to_dict()
    extra = (files or reproduce_files)(run, d)
    write_json(os.path.join(config.out, "results.json"), d)
    write_html(d, os.path.join(config.out, "report.html"))
    for name, text in extra.items():
        write_text(os.path.join(config.out, name), text)


def reproduce_files(run: RunResult, d: dict) -> dict[str, str]:
    """The forward pass's: the snippet in results.json, and reproduce.py once a recipe is chosen."""
    from ..snippet import snippet

    d["snippet"] = snippet(run)
    return {"reproduce.py": d["snippet"]} if run.chosen else {}


def save_chosen(run: RunResult, base: RecipeResult, models: dict[str, nn.Module], workload: Workload, example,
                config) -> RecipeResult | None:
    """Choose the best recipe under the objective (choose.py) and save it. What is written is what was
    validated: a recipe whose saved folder does not reload in a fresh process (or does not save) is
    not chosen, its row says why, and the next best recipe is chosen and saved instead."""
    while True:
        chosen = choose(run.recipes, config.objective)
        if chosen is None:
            return None
        chosen.status, chosen.reason, run.chosen = Status.CHOSEN, why(chosen, base, config.objective), chosen.name
        if not (config.out and config.save_model):
            return chosen
        problem = save(run, chosen, models[chosen.name], workload, example, config)
        if problem is None:
            return chosen
        chosen.status, run.chosen = Status.FAILED, None
        chosen.reason = f"best under {config.objective}, but its saved model does not reload: {problem}"
        print(f"torchslim: {chosen.name}: the saved model does not reload ({problem}); choosing the next best recipe",
              file=sys.stderr)


def save(run: RunResult, chosen: RecipeResult, model: nn.Module, workload: Workload, example, config) -> str | None:
    """Save the chosen recipe's model (and what reloads it) as config.out/model: written to a staging
    folder, reloaded there in a fresh process and checked against its saved reference outputs, and
    only then put in place (run.artifact). Returns None, or why the folder does not save or reload
    (then nothing is put in place)."""
    folder = os.path.join(config.out, "model")
    recipe = Recipe.from_list(chosen.steps)
    calibration = validation.for_recipes(workload)  # what the recipe was calibrated on (held-out batches excluded)
    staged = staging_folder(folder)
    try:
        try:
            calib = list(calibration()) if calibration and any(s.needs_calibration for s in recipe.steps) else None
            artifacts.save(staged, workload.model, recipe, workload.example, spec=workload.spec, source=workload.source,
                           reference_output=caller(model, example)(), calibration=calib, optimized=model,
                           keep_float=getattr(config, "keep_float", False), candidates=top_candidates(run, config.objective))
        except Exception as e:  # noqa: BLE001 - an export that fails on save is a recipe that cannot ship
            return f"saving failed: {type(e).__name__}: {first_line(e)}"
        problem = reload_problem(staged, workload.model)
        if problem is None:
            replace_folder(staged, folder)
            run.artifact = folder
        return problem
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def top_candidates(run: RunResult, objective: str, k: int = 5) -> list[dict]:
    """The recipes that passed on this host, best first under `objective` (up to `k`), with the
    ratios measured here: what a deploy host re-checks (the saved folder's torchslim.json)."""
    return [{"name": r.name, "steps": r.steps, "speedup": r.speedup, "median_ms": r.timing.median_ms,
             "size_bytes": r.size_bytes, "min_cosine": r.fidelity.min_cosine if r.fidelity else None,
             "metric_drop": r.metric_drop}
            for r in ranked(run.recipes, objective, ("ok", "chosen"))[:k]]


def reload_problem(folder: str, model: nn.Module | None = None) -> str | None:
    """Why the saved `folder` does not reload, or None. A folder that rebuilds by itself (an engine
    file, or a model spec) is loaded by torchslim.load in a fresh process with this Python, as a
    server would: nothing of this process (imported classes, registered pytree nodes, compiled
    kernels) helps it. One that needs its architecture passed (a module optimized in memory) is
    loaded here, with a copy of `model`. torchslim.load checks the outputs against the reference."""
    manifest = artifacts.read_manifest(folder)
    if not manifest.get("engine") and not manifest.get("spec"):
        try:
            artifacts.load(folder, model=copy.deepcopy(model))
        except Exception as e:  # noqa: BLE001 - whatever stops the reload is the reason
            return f"torchslim.load(folder, model=...) fails: {type(e).__name__}: {getattr(e, 'what', None) or first_line(e)}"
        return None
    path = [os.getcwd() if not p else p for p in sys.path]  # the same torchslim and the user's modules
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    try:
        proc = subprocess.run([sys.executable, "-c", _RELOAD_CHILD, os.path.abspath(folder)], env=env,
                              capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"torchslim.load in a fresh process did not finish within {RELOAD_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    marked = [ln[len(_RELOAD_MARK):] for ln in proc.stdout.splitlines() if ln.startswith(_RELOAD_MARK)]
    last = marked[-1] if marked else (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return f"torchslim.load in a fresh process fails: {last}"
