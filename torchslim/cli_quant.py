"""`torchslim sensitivity` and `torchslim recalibrate` (issue 3: per-layer sensitivity, calibration drift)."""
from __future__ import annotations

import argparse
import os

from .errors import SlimError

DEFAULT_OUT = "torchslim-out"


def add_parsers(sub) -> dict:
    """Add this module's sub-commands to `sub`; return {name: function(args) -> exit code}."""
    s = sub.add_parser("sensitivity", help="rank layers by the damage quantizing each one alone does",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="The model is prepared and calibrated once; each layer is then scored with only its own "
                              "quantizers switched on (output SQNR vs FP32, and the task metric with --eval).")
    s.add_argument("--model", required=True, help="model spec, as for optimize (file.py:factory, module:factory, hf:DIR, ...)")
    s.add_argument("--input-shape", help="example input shape(s), e.g. 8x3x224x224 or 1x128,1x128")
    s.add_argument("--dtype", help="input dtype(s): float32 (default), int64, ... comma-separated per input")
    s.add_argument("--inputs", help="example inputs saved with torch.save")
    s.add_argument("--weights", help="state dict to load into the model (loaded with weights_only=True)")
    s.add_argument("--trust-pickle", action="store_true", help="allow loading pickled modules (runs code from the file!)")
    s.add_argument("--eval", help="task metric: file.py:fn or module:fn taking the model, returning a number or a dict")
    s.add_argument("--calib-data", help="calibration inputs for static INT8: a .pt file or file.py:fn returning batches")
    s.add_argument("--calib-samples", type=int, default=256, help="calibration samples to use (default 256)")
    s.add_argument("--technique", default="static_int8",
                   help="the quantization to measure: static_int8 (default), static_int8_fx, pt2e_dynamic_int8, ao_int8_dynamic, weight_only")
    s.add_argument("--no-metric", action="store_true", help="output SQNR only: skip the task metric per layer (faster)")
    s.add_argument("--batches", type=int, default=4, help="batches for the output SQNR: the example and calibration batches (default 4)")
    s.add_argument("--out", default=DEFAULT_OUT, help=f"folder for sensitivity.json and sensitivity.html (default: {DEFAULT_OUT})")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    r = sub.add_parser("recalibrate", help="refresh a static INT8 model's ranges from new data (no training), save it anew",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Reports SQNR/cosine vs FP32 and the saturation on the new data, and the task metric, "
                              "before and after; the new model is written to a temporary folder and renamed into place.")
    r.add_argument("model", help="a model folder written by `torchslim optimize` (OUT/model)")
    r.add_argument("--data", required=True, help="new calibration inputs: a .pt file ([N,...] tensor, tuple or dict of them) or file.py:fn")
    r.add_argument("--eval", help="task metric on the new data: file.py:fn or module:fn (default: the model spec's own, if any)")
    r.add_argument("--samples", type=int, default=None, help="calibration samples to use (default: the recipe's max_samples)")
    r.add_argument("--out", default=None, help="folder for the new model (default: MODEL-recalibrated; may be MODEL itself)")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return {"sensitivity": cmd_sensitivity, "recalibrate": cmd_recalibrate}


def _workload(args):
    from .cli import workload_from_args

    return workload_from_args(args, args.model)


def _technique(name: str):
    from .sensitivity import has_skip, skip_techniques
    from .techniques import CONFIGS

    cls = CONFIGS.get(name)
    cfg = cls() if cls is not None else None
    if cfg is None or not has_skip(cfg):
        raise SlimError(f"--technique '{name}' cannot be measured per layer", f"use one of: {skip_techniques()}")
    return cfg


def cmd_sensitivity(args) -> int:
    from .fileio import write_json
    from .report import format_sensitivity, write_sensitivity_html
    from .sensitivity import SensitivityConfig, sensitivity

    config = SensitivityConfig(technique=_technique(args.technique), metric=not args.no_metric, batches=args.batches)
    result = sensitivity(_workload(args), config, progress=not args.no_progress)
    print(format_sensitivity(result))
    write_json(os.path.join(args.out, "sensitivity.json"), result)
    write_sensitivity_html(result, os.path.join(args.out, "sensitivity.html"))
    print(f"\nwrote {args.out}/sensitivity.json, {args.out}/sensitivity.html")
    return 0


def cmd_recalibrate(args) -> int:
    from .drift import recalibrate

    evaluate = metric = None
    if args.eval:
        from .loading import load_evaluate

        evaluate, metric = load_evaluate(args.eval)
    if args.samples is not None and args.samples < 1:
        raise SlimError("--samples must be >= 1", "e.g. --samples 256")
    from .report import format_recalibration

    rep = recalibrate(args.model, args.data, args.out, evaluate=evaluate, metric=metric, samples=args.samples)
    print(format_recalibration(rep))
    print(f"\nwrote {rep['artifact']} (report: recalibration.json)")
    return 0


__all__ = ["add_parsers"]
