"""`torchslim optimize` (image/text models and causal LMs), `torchslim recipes` and `torchslim report`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import SlimError
from . import options
from .tasks import TASK_CLIS

def add_optimize(sub) -> argparse.ArgumentParser:
    o = sub.add_parser("optimize", help="try every applicable recipe, measure, choose and save the best",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="With no --model, runs the built-in real examples (Fashion-MNIST CNN, all-MiniLM-L6-v2).",
                       parents=[options.model(), options.example(), options.calibration(),
                                options.out("results.json, report.html, the chosen model", options.DEFAULT_OUT),
                                options.device("auto", "cpu, cuda or auto"), options.progress(), options.debug()])
    o.add_argument("--objective", default=None, choices=["latency", "throughput", "size", "memory"],
                   help="what the chosen recipe is best at (default latency; text generation: latency = decode tokens/s "
                        "at --batch-size, throughput = decode tokens/s at --large-batch, size = smallest saved model, "
                        "memory = lowest peak memory, each among the recipes that decode faster than the baseline)")
    o.add_argument("--max-drop", type=float, default=None,
                   help="largest allowed drop of the task metric (default 1.0; text generation: the perplexity increase "
                        "in percent, the same as --max-ppl-increase, default 5)")
    o.add_argument("--min-cosine", type=float, default=None,
                   help="smallest allowed per-sample output cosine vs FP32 (default 0.99; not for text generation)")
    o.add_argument("--recipes", help="comma-separated recipe names to try (default: all applicable; see `torchslim recipes`)")
    o.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 15; text generation: 5 generations)")
    o.add_argument("--no-fallback", action="store_true",
                   help="do not retry a rejected quantization recipe with its most sensitive layers kept in float "
                        "(not for text generation, which has no such retry)")
    o.add_argument("--fallback-max-layers", type=int, default=None,
                   help="most layers the fallback may keep in float (default: half the quantized layers, at most 8)")
    o.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="minutes for trying recipes (likely winners first); the rest are listed as skipped "
                        "(default 1.5 per model, text generation 10; 0: no limit)")
    o.add_argument("--exhaustive", action="store_true",
                   help="try every recipe: no time budget, no hardware skip, no early rejection, every fallback "
                        "(text generation: the extended recipe list too)")
    o.add_argument("--fresh", action="store_true", help="search anew instead of reusing the rows of an identical earlier search "
                                                        "(not for text generation, which always searches anew)")
    o.add_argument("--keep-float", action="store_true",
                   help="also save the FP32 weights and calibration inputs beside an engine file (ONNX, OpenVINO IR, "
                        ".pt2) that loads by itself, to rebuild or recalibrate it later (default: the lean folder)")
    o.add_argument("--task", choices=[t.TASK for t in TASK_CLIS], default=None,
                   help="run --model as this kind of workload (default: the forward pass, or what the model file says)")
    for t in TASK_CLIS:
        t.add_options(o)
    return o


def run_optimize(args) -> int:
    from ..examples import DEMOS
    from ..optimize import OptimizeConfig, optimize
    from ..report import format_table

    for t in TASK_CLIS:  # a workload package's own command line (generation/cli.py): it runs the model if it is its kind
        if t.wants(args):
            return t.run(args)
    for t in TASK_CLIS:
        t.refuse_own_options(args)
    out = args.out or options.DEFAULT_OUT
    if args.model:
        jobs = [(args.model, out)]
    else:
        if args.input_shape or args.weights or args.inputs or args.eval:
            raise SlimError("--input-shape/--inputs/--weights/--eval need --model", "pass --model, or drop them to run the built-in examples")
        jobs = [(spec, os.path.join(out, name)) for name, spec in DEMOS.items()]
        print(f"torchslim: no --model given: running the built-in examples ({', '.join(DEMOS)}) into {out}/", file=sys.stderr)
    for spec, folder in jobs:
        workload = options.workload_from_args(args, spec)
        config = OptimizeConfig(
            objective=args.objective or "latency", max_drop=1.0 if args.max_drop is None else args.max_drop,
            min_cosine=0.99 if args.min_cosine is None else args.min_cosine, recipes=options.recipe_names(args),
            device=args.device, threads=args.threads, rounds=15 if args.rounds is None else args.rounds, out=folder, debug=args.debug,
            fallback=not args.no_fallback, fallback_max_layers=args.fallback_max_layers, keep_float=args.keep_float,
            **_search_options(args),
        )
        run = optimize(workload, config, progress=not args.no_progress)
        print(format_table(run.to_dict()))
        print(f"\nwrote {folder}/results.json, {folder}/report.html" + (f", {run.artifact}/ and {folder}/reproduce.py" if run.artifact else ""))
        _print_deploy(run)
        if not run.chosen:
            print("no recipe beat the baseline under the thresholds; nothing was saved", file=sys.stderr)
    return 0


def _print_deploy(run) -> None:
    """How to serve the saved model without torchslim."""
    from .. import artifact_files, artifacts

    if not run.artifact:
        return
    files = artifacts.read_manifest(run.artifact).get("files") or {}
    total = sum(e["bytes"] for e in files.values())
    print(f"{run.artifact}/: {len(files)} files, {total / 1e6:.1f} MB" + ("" if os.path.isfile(os.path.join(run.artifact, "weights.pt"))
          else " (lean: no FP32 weights; --keep-float keeps them)"))
    for line in artifact_files.table(files):
        print(line)
    path = os.path.join(run.artifact, artifacts.TORCHSCRIPT)
    if os.path.isfile(path):
        print(f"serve without torchslim: torch.jit.load('{path}')")
        if _on_static_runtime(run):
            print("  measured on TorchScript's Static Runtime: in Python torch._C._jit_to_static_module(m._c), "
                  "in C++ torch::jit::StaticModule (torch.jit.load alone runs the interpreter, a few % slower at batch 1)")
    if os.path.isfile(os.path.join(run.artifact, "engine.json")):
        from ..engines import deploy_line

        print(deploy_line(run.artifact))


def _on_static_runtime(run) -> bool:
    """Whether the chosen recipe was measured on TorchScript's Static Runtime: a step of it says so
    in its `static_runtime` field (asked of the recipe's configs, not read from its name)."""
    from ..recipes import Recipe

    row = next((r for r in run.recipes if r.name == run.chosen), None)
    return row is not None and any(getattr(step, "static_runtime", False) is True
                                   for step in Recipe.from_list(row.steps).steps)


def _search_options(args) -> dict:
    """--time-budget/--exhaustive/--fresh as OptimizeConfig fields (the budget's default is
    OptimizeConfig's; --exhaustive records no limit); the CLI caches searches."""
    opts = {"exhaustive": args.exhaustive, "cache": True, "fresh": args.fresh}
    if args.exhaustive or args.time_budget is not None:
        opts["time_budget"] = None if args.exhaustive else args.time_budget
    return opts


# -- recipes, report --------------------------------------------------------------------------------

def add_recipes(sub) -> argparse.ArgumentParser:
    return sub.add_parser("recipes", help="list the recipes torchslim can try on this machine",
                          parents=[options.device("auto", "cpu, cuda or auto", threads=False)])


def run_recipes(args) -> int:
    from .. import device as dev
    from ..recipes import candidates, missing_hardware

    device = dev.resolve(args.device)
    for r in candidates(device):
        why = missing_hardware(r, device)
        print(r.name + (f"  (skipped unless named: {why})" if why else ""))
    return 0


def add_report(sub) -> argparse.ArgumentParser:
    rep = sub.add_parser("report", help="re-render report.html and the table from a results.json")
    rep.add_argument("results", help="path to results.json")
    return rep


def run_report(args) -> int:
    from ..report import format_table, write_html

    if not os.path.isfile(args.results):
        raise SlimError(f"'{args.results}' does not exist", "give the results.json that torchslim optimize wrote")
    try:
        with open(args.results, encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        raise SlimError(f"'{args.results}' cannot be read as JSON: {e}", "give the results.json that torchslim optimize wrote") from None
    if not isinstance(run, dict) or not isinstance(run.get("recipes"), list) or not run["recipes"]:
        raise SlimError(f"'{args.results}' is not a torchslim results.json (no recipe rows)",
                        "give the results.json that torchslim optimize wrote")
    path = os.path.join(os.path.dirname(os.path.abspath(args.results)), "report.html")
    write_html(run, path)
    print(format_table(run))
    print(f"\nwrote {path}")
    return 0
