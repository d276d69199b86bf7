"""`torchslim sensitivity` (per-layer quantization damage) and `torchslim recalibrate` (calibration drift)."""
from __future__ import annotations

import argparse
import os

from ..errors import SlimError
from . import options


def add_sensitivity(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("sensitivity", help="rank layers by the damage quantizing each one alone does",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="The model is prepared and calibrated once; each layer is then scored with only its own "
                              "quantizers switched on (output SQNR vs FP32, and the task metric with --eval).",
                       parents=[options.model(required=True), options.example(), options.calibration(),
                                options.out("sensitivity.json, sensitivity.html", options.DEFAULT_OUT, default=options.DEFAULT_OUT),
                                options.progress(), options.debug()])
    s.add_argument("--technique", default="static_int8",
                   help="the quantization to measure: static_int8 (default), static_int8_fx, pt2e_dynamic_int8, ao_int8_dynamic, weight_only")
    s.add_argument("--no-metric", action="store_true", help="output SQNR only: skip the task metric per layer (faster)")
    s.add_argument("--batches", type=int, default=4, help="batches for the output SQNR: the example and calibration batches (default 4)")
    return s


def _technique(name: str):
    from ..sensitivity import has_skip, skip_techniques
    from ..techniques import CONFIGS

    cls = CONFIGS.get(name)
    cfg = cls() if cls is not None else None
    if cfg is None or not has_skip(cfg):
        raise SlimError(f"--technique '{name}' cannot be measured per layer", f"use one of: {skip_techniques()}")
    return cfg


def run_sensitivity(args) -> int:
    from ..fileio import write_json
    from ..report import format_sensitivity, write_sensitivity_html
    from ..sensitivity import SensitivityConfig, sensitivity

    config = SensitivityConfig(technique=_technique(args.technique), metric=not args.no_metric, batches=args.batches)
    result = sensitivity(options.workload_from_args(args, args.model), config, progress=not args.no_progress)
    print(format_sensitivity(result))
    write_json(os.path.join(args.out, "sensitivity.json"), result)
    write_sensitivity_html(result, os.path.join(args.out, "sensitivity.html"))
    print(f"\nwrote {args.out}/sensitivity.json, {args.out}/sensitivity.html")
    return 0


def add_recalibrate(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("recalibrate", help="refresh a static INT8 model's ranges from new data (no training), save it anew",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Reports SQNR/cosine vs FP32 and the saturation on the new data, and the task metric, "
                              "before and after; the new model is written to a temporary folder and renamed into place.",
                       parents=[options.out("the new model", "MODEL-recalibrated; may be MODEL itself"), options.debug()])
    r.add_argument("model", help="a model folder written by `torchslim optimize` (OUT/model)")
    r.add_argument("--data", required=True, help="new calibration inputs: a .pt file ([N,...] tensor, tuple or dict of them) or file.py:fn")
    # not options.example()'s --eval: here it scores the new data, and defaults to the model's own
    r.add_argument("--eval", help="task metric on the new data: file.py:fn or module:fn (default: the model spec's own, if any)")
    r.add_argument("--samples", type=int, default=None, help="calibration samples to use (default: the recipe's max_samples)")
    return r


def run_recalibrate(args) -> int:
    from ..drift import recalibrate
    from ..report import format_recalibration

    evaluate = metric = None
    if args.eval:
        from ..loading import load_evaluate

        evaluate, metric = load_evaluate(args.eval)
    if args.samples is not None and args.samples < 1:
        raise SlimError("--samples must be >= 1", "e.g. --samples 256")
    rep = recalibrate(args.model, args.data, args.out, evaluate=evaluate, metric=metric, samples=args.samples)
    print(format_recalibration(rep))
    print(f"\nwrote {rep['artifact']} (report: recalibration.json)")
    return 0
