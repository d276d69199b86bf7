"""The options several commands share, as argparse parent parsers (`parents=[...]`): one help text each."""
from __future__ import annotations

import argparse

DEFAULT_OUT = "torchslim-out"  # optimize and sensitivity


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def model(required: bool = False) -> argparse.ArgumentParser:
    """--model, --weights, --trust-pickle."""
    p = _parent()
    p.add_argument("--model", required=required,
                   help="model spec: file.py:factory, package.module:factory, hf:DIR, model.pt (TorchScript), "
                        "model.pt2 (torch.export)")
    p.add_argument("--weights", help="state dict to load into the model (loaded with weights_only=True)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled modules (runs code from the file!)")
    return p


def example() -> argparse.ArgumentParser:
    """--input-shape, --dtype, --inputs, --eval: what the model is run and scored on."""
    p = _parent()
    p.add_argument("--input-shape", help="example input shape(s), e.g. 8x3x224x224 or 1x128,1x128")
    p.add_argument("--dtype", help="input dtype(s): float32 (default), int64, ... comma-separated per input")
    p.add_argument("--inputs", help="example inputs saved with torch.save (a tensor, tuple/list or dict of tensors)")
    p.add_argument("--eval", help="task metric: file.py:fn or module:fn taking the model, returning a number or a dict "
                                  "(its first key is the primary metric, the one optimize's --max-drop limits); higher is better")
    return p


def calibration(data: bool = True) -> argparse.ArgumentParser:
    """--calib-data (unless `data` is False) and --calib-samples."""
    p = _parent()
    if data:
        p.add_argument("--calib-data", help="calibration inputs for static INT8: a .pt/.npy/.npz file of [N,...] inputs, "
                       "a folder of images (DIR or DIR?mean=R,G,B&std=R,G,B; ImageNet mean/std by default), a .txt/.jsonl "
                       "of texts (hf: models), a datasets save_to_disk folder, or file.py:fn returning batches, a Dataset "
                       "or a DataLoader")
    p.add_argument("--calib-samples", type=int, default=256, help="calibration samples for the static INT8 ranges (default 256)")
    return p


def device(default: str, choices: str, threads: bool = True) -> argparse.ArgumentParser:
    """--device (with its default and what it accepts) and, unless `threads` is False, --threads."""
    p = _parent()
    p.add_argument("--device", default=default, help=f"{choices} (default {default})")
    if threads:
        p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process (default: torch's choice)")
    return p


def out(what: str, default_folder: str, default: str | None = None) -> argparse.ArgumentParser:
    """--out: the folder `what` is written to; `default` is the parsed default (None: the command
    substitutes `default_folder`, so it can tell an explicit --out apart)."""
    p = _parent()
    p.add_argument("--out", default=default, help=f"output folder: {what} (default: {default_folder})")
    return p


def progress() -> argparse.ArgumentParser:
    """--no-progress."""
    p = _parent()
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def debug(top: bool = False) -> argparse.ArgumentParser:
    """--debug, accepted before or after the command name (the command's copy does not reset the top one)."""
    p = _parent()
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS, help="show tracebacks")
    return p


def workload_from_args(args, spec: str):
    """The Workload that --model/--input-shape/--dtype/--weights/--inputs/--eval/--calib-data describe
    (shared by optimize and sensitivity)."""
    from ..calibration import from_spec
    from ..loading import load_evaluate, load_inputs, load_model

    workload = load_model(spec, input_shape=args.input_shape, dtype=args.dtype, weights=args.weights,
                          trust_pickle=args.trust_pickle, need_example=not args.inputs)
    if args.inputs:
        workload.example = load_inputs(args.inputs)
    if args.eval:
        workload.evaluate, workload.metric = load_evaluate(args.eval)
    if args.calib_data:
        workload.calibration = from_spec(args.calib_data, workload.example, args.calib_samples, model_spec=workload.spec)
        workload.source["calib_data"] = args.calib_data
    return workload


def recipe_names(args) -> tuple[str, ...] | None:
    """--recipes as a tuple of names (None: all applicable)."""
    if args.recipes is None:
        return None
    names = tuple(s.strip() for s in args.recipes.split(",") if s.strip())
    if not names:
        from ..errors import SlimError

        raise SlimError(f"--recipes {args.recipes!r} names no recipe", "give comma-separated names (see `torchslim recipes`), or leave it out")
    return names
