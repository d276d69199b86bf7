"""`torchslim check MODEL_DIR`: does the saved choice still hold on this host? The recipes that passed
where the folder was saved (its torchslim.json "candidates") are applied again here, checked and timed
against the FP32 baseline by the ordinary search (optimize), within a small time budget."""
from __future__ import annotations

import os
import shutil
import tempfile

import torch

from . import artifacts
from .errors import SlimError
from .fidelity import compare, output_tensors
from .fileio import replace_folder
from .recipes import Recipe
from .search.workload_type import WorkloadType

CHECK_TIME_BUDGET_MIN = 1.0


def check(folder: str, *, weights: str | None = None, time_budget: float = CHECK_TIME_BUDGET_MIN, rounds: int = 5,
          threads: int | None = None, switch: bool = False, out: str | None = None, progress: bool = True) -> dict:
    """Re-apply and re-time the saved folder's top candidates on this host. Returns {saved, winner,
    holds, rows, lines, run}; with `switch`, a different winner is saved over `folder` (after the
    same fresh-process reload check as optimize's)."""
    from .optimize import OptimizeConfig, optimize

    manifest = artifacts.read_manifest(folder)
    kind = WorkloadType.find(manifest.get("task"))
    if kind is not None and not kind.checkable:
        raise SlimError(f"torchslim check re-times optimize's models; this folder holds a {kind.task} model",
                        f"run torchslim optimize --task {kind.task} on this host")
    saved = manifest.get("recipe_name")
    cands = manifest.get("candidates") or [{"name": saved, "steps": manifest["recipe"]}]
    workload = _workload(folder, manifest, weights)
    tmp = None if out else tempfile.mkdtemp(prefix="torchslim-check-")
    config = OptimizeConfig(recipes=tuple(Recipe.from_list(c["steps"]) for c in cands), time_budget=time_budget,
                            rounds=rounds, threads=threads, out=out or tmp, save_model=switch, fallback=False)
    try:
        run = optimize(workload, config, progress=progress)
        rows = {r.name: r for r in run.recipes}
        there = {c["name"]: c for c in cands}
        host = (manifest.get("host") or {}).get("cpu") or "the saving host"
        mine = rows.get(saved)
        lines = [f"saved choice {saved}: {_x(there.get(saved, {}).get('speedup'))} on {host}, "
                 + (f"{_x(mine.speedup)} here ({mine.status}{': ' + mine.reason if mine.status not in ('ok', 'chosen') else ''})"
                    if mine else "not tried here")]
        holds = run.chosen == saved
        if holds:
            lines.append(f"the saved choice still holds here: {saved} is the fastest of the {len(cands)} candidate(s)")
        elif run.chosen:
            win = rows[run.chosen]
            lines.append(f"{run.chosen} wins here: {_x(win.speedup)} vs the baseline"
                         + (f", {win.speedup / mine.speedup:.2f}x faster than {saved}" if mine and mine.speedup else ""))
        else:
            lines.append("no candidate beats the FP32 baseline here under the thresholds: serve the FP32 model")
        switched = False
        if switch and run.chosen and not holds and run.artifact:
            replace_folder(run.artifact, folder)
            switched = True
            lines.append(f"switched: {folder} now holds {run.chosen}")
        return {"saved": saved, "winner": run.chosen, "holds": holds, "switched": switched, "lines": lines,
                "rows": {n: {"status": str(r.status), "speedup": r.speedup, "reason": r.reason} for n, r in rows.items()},
                "run": run}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _x(v) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else "-"


def _workload(folder: str, manifest: dict, weights: str | None):
    """The FP32 workload the folder was made from: the model from its spec with the folder's FP32
    weights (or `weights`, or the spec's own where the folder was saved lean and they reproduce the
    saved outputs), the saved example, and the saved (or re-read) calibration data."""
    from .calibration import from_spec
    from .loading import load_model

    spec, src = manifest.get("spec"), manifest.get("source") or {}
    if not spec:
        raise SlimError(f"'{folder}' records no model spec (it was optimized from an in-memory module)",
                        "check it from Python: torchslim.optimize(Workload(model, example), OptimizeConfig(recipes=...))")
    wl = load_model(spec, input_shape=src.get("input_shape"), dtype=src.get("dtype"), weights=weights,
                    trust_pickle=src.get("format") == "pickle", need_example=False)
    example, calibration = artifacts.saved_inputs(folder)
    wl.example = example
    if os.path.isfile(os.path.join(folder, "weights.pt")) and weights is None:
        wl.model.load_state_dict(artifacts.saved_weights(folder))
    elif weights is None:  # lean: the spec's own weights must be the ones that made the saved outputs
        with torch.no_grad():
            fid = compare(artifacts.saved_reference(folder), [t.float() for t in output_tensors(example(wl.model.eval()))])
        if not fid.finite or fid.min_cosine < 0.98:
            raise SlimError(f"'{folder}' holds no FP32 weights (saved lean) and the model from its spec '{spec}' does not "
                            f"reproduce the saved outputs (min cosine {fid.min_cosine:.3f})",
                            "pass the trained weights with --weights FILE, or optimize again with --keep-float")
    if calibration is not None:
        wl.calibration = calibration
    elif src.get("calib_data"):
        wl.calibration = from_spec(src["calib_data"], example, model_spec=spec)
    return wl
