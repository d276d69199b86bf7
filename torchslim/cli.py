"""The `torchslim` command line: string names live here and nowhere else."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .errors import SlimError

DEMO_OUT = "torchslim-out"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchslim", description="Make a trained PyTorch model smaller and faster, and prove it.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("optimize", help="try every applicable recipe, measure, choose and save the best",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="With no --model, runs the built-in real examples (Fashion-MNIST CNN, all-MiniLM-L6-v2).")
    o.add_argument("--model", help="model spec: file.py:factory, package.module:factory, hf:DIR, model.pt (TorchScript), model.pt2 (torch.export)")
    o.add_argument("--input-shape", help="example input shape(s), e.g. 8x3x224x224 or 1x128,1x128")
    o.add_argument("--dtype", help="input dtype(s): float32 (default), int64, ... comma-separated per input")
    o.add_argument("--inputs", help="example inputs saved with torch.save (a tensor, tuple/list or dict of tensors)")
    o.add_argument("--eval", help="task metric: file.py:fn or module:fn taking the model, returning a number or a dict "
                                  "(the first key is the metric --max-drop applies to); higher is better")
    o.add_argument("--weights", help="state dict to load into the model (loaded with weights_only=True)")
    o.add_argument("--trust-pickle", action="store_true", help="allow loading pickled modules (runs code from the file!)")
    o.add_argument("--calib-data", help="calibration inputs for static INT8: a .pt/.npy/.npz file of [N,...] inputs, a folder of images "
                        "(DIR or DIR?mean=R,G,B&std=R,G,B; ImageNet mean/std by default), a .txt/.jsonl of texts (hf: models), "
                        "a datasets save_to_disk folder, or file.py:fn returning batches, a Dataset or a DataLoader")
    o.add_argument("--calib-samples", type=int, default=256, help="calibration samples to use (default 256)")
    o.add_argument("--out", default=None, help=f"output folder (default: {DEMO_OUT})")
    o.add_argument("--objective", default="latency", choices=["latency", "throughput", "size", "memory"])
    o.add_argument("--max-drop", type=float, default=1.0, help="largest allowed drop of the task metric (default 1.0)")
    o.add_argument("--min-cosine", type=float, default=0.99, help="smallest allowed per-sample output cosine vs FP32 (default 0.99)")
    o.add_argument("--recipes", help="comma-separated recipe names to try (default: all applicable; see `torchslim recipes`)")
    o.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    o.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    o.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    o.add_argument("--no-fallback", action="store_true",
                   help="do not retry a rejected quantization recipe with its most sensitive layers kept in float")
    o.add_argument("--fallback-max-layers", type=int, default=None,
                   help="most layers the fallback may keep in float (default: half the quantized layers, at most 8)")
    o.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="minutes for trying recipes (likely winners first); the rest are listed as skipped "
                        "(default 1.5 per model; 0: no limit)")
    o.add_argument("--exhaustive", action="store_true",
                   help="try every recipe: no time budget, no hardware skip, no early rejection, every fallback")
    o.add_argument("--fresh", action="store_true", help="search anew instead of reusing the rows of an identical earlier search")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    from .generation import cli as gen_cli

    gen_cli.add_arguments(o)

    r = sub.add_parser("recipes", help="list the recipes torchslim can try on this machine")
    r.add_argument("--device", default="auto")

    rep = sub.add_parser("report", help="re-render report.html and the table from a results.json")
    rep.add_argument("results", help="path to results.json")
    for module in _command_modules():
        COMMANDS.update(module.add_parsers(sub))
    return p


def _command_modules():
    """Commands that live beside their feature (training, quantization tools): each module's
    `add_parsers(sub)` adds its sub-parsers and returns {command name: function(args) -> exit code}."""
    from . import cli_quant, cli_train

    return (cli_quant, cli_train)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_glue_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return COMMANDS[args.command](args)
    except SlimError as e:
        if args.debug:
            traceback.print_exc()
        print(f"torchslim: error: {e.what}", file=sys.stderr)
        if e.fix:
            print(f"  what to do: {e.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchslim: interrupted; results so far are kept under --out", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        if isinstance(e, MemoryError) or "can't allocate memory" in str(e):
            print(f"torchslim: error: out of memory: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            print("  what to do: use a smaller batch or size in --input-shape", file=sys.stderr)
            return 2
        print(f"torchslim: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        print("  what to do: re-run with --debug and report the traceback", file=sys.stderr)
        return 1


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--input-shape -2x3` -> `--input-shape=-2x3`: argparse takes a value that starts with '-' and
    is not a plain number for an option and fails with "expected one argument"; glued, the value
    reaches its own check and gets a clear error."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" not in a and i + 1 < len(argv) and len(argv[i + 1]) > 1 \
                and argv[i + 1][0] == "-" and argv[i + 1][1].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def cmd_optimize(args) -> int:
    from . import artifacts
    from .examples import DEMOS
    from .optimize import OptimizeConfig, optimize
    from .report import format_table

    from .generation import cli as gen_cli

    if gen_cli.wants_generation(args):
        return gen_cli.cmd_generate(args)
    out = args.out or DEMO_OUT
    if args.model:
        jobs = [(args.model, out)]
    else:
        if args.input_shape or args.weights or args.inputs or args.eval:
            raise SlimError("--input-shape/--inputs/--weights/--eval need --model", "pass --model, or drop them to run the built-in examples")
        jobs = [(spec, os.path.join(out, name)) for name, spec in DEMOS.items()]
        print(f"torchslim: no --model given: running the built-in examples ({', '.join(DEMOS)}) into {out}/", file=sys.stderr)
    status = 0
    for spec, folder in jobs:
        workload = workload_from_args(args, spec)
        config = OptimizeConfig(
            objective=args.objective, max_drop=args.max_drop, min_cosine=args.min_cosine,
            recipes=tuple(s.strip() for s in args.recipes.split(",") if s.strip()) if args.recipes else None,
            device=args.device, threads=args.threads, rounds=args.rounds, out=folder, debug=args.debug,
            fallback=not args.no_fallback, fallback_max_layers=args.fallback_max_layers, **_search_options(args),
        )
        run = optimize(workload, config, progress=not args.no_progress)
        print(format_table(run.to_dict()))
        print(f"\nwrote {folder}/results.json, {folder}/report.html" + (f", {run.artifact}/ and {folder}/reproduce.py" if run.artifact else ""))
        if run.artifact and os.path.isfile(os.path.join(run.artifact, artifacts.TORCHSCRIPT)):
            path = os.path.join(run.artifact, artifacts.TORCHSCRIPT)
            print(f"serve without torchslim: torch.jit.load('{path}')")
            if run.chosen.endswith("-sr"):
                print("  measured on TorchScript's Static Runtime: in Python torch._C._jit_to_static_module(m._c), "
                      "in C++ torch::jit::StaticModule (torch.jit.load alone runs the interpreter, a few % slower at batch 1)")
        if run.artifact and os.path.isfile(os.path.join(run.artifact, "engine.json")):
            from .engines import deploy_line

            print(deploy_line(run.artifact))
        if not run.chosen:
            print("no recipe beat the baseline under the thresholds; nothing was saved", file=sys.stderr)
    return status


def _search_options(args) -> dict:
    """--time-budget/--exhaustive/--fresh as OptimizeConfig fields; the CLI caches searches."""
    from .optimize import DEFAULT_TIME_BUDGET_MIN

    budget = DEFAULT_TIME_BUDGET_MIN if args.time_budget is None else args.time_budget
    return {"time_budget": None if args.exhaustive else budget, "exhaustive": args.exhaustive,
            "cache": True, "fresh": args.fresh}


def workload_from_args(args, spec: str):
    """The Workload that --model/--input-shape/--dtype/--weights/--inputs/--eval/--calib-data describe
    (shared by optimize and sensitivity)."""
    from .loading import load_evaluate, load_inputs, load_model

    workload = load_model(spec, input_shape=args.input_shape, dtype=args.dtype, weights=args.weights,
                          trust_pickle=args.trust_pickle, need_example=not args.inputs)
    if args.inputs:
        workload.example = load_inputs(args.inputs)
    if args.eval:
        workload.evaluate, workload.metric = load_evaluate(args.eval)
    if args.calib_data:
        from .calibration import from_spec

        workload.calibration = from_spec(args.calib_data, workload.example, args.calib_samples, model_spec=workload.spec)
        workload.source["calib_data"] = args.calib_data
    return workload


def cmd_recipes(args) -> int:
    from . import device as dev
    from .recipes import candidates, missing_hardware

    device = dev.resolve(args.device)
    for r in candidates(device):
        why = missing_hardware(r, device)
        print(r.name + (f"  (skipped unless named: {why})" if why else ""))
    return 0


def cmd_report(args) -> int:
    import json

    from .report import format_table, write_html

    if not os.path.isfile(args.results):
        raise SlimError(f"'{args.results}' does not exist", "give the results.json that torchslim optimize wrote")
    with open(args.results, encoding="utf-8") as f:
        run = json.load(f)
    path = os.path.join(os.path.dirname(os.path.abspath(args.results)), "report.html")
    write_html(run, path)
    print(format_table(run))
    print(f"\nwrote {path}")
    return 0


COMMANDS = {"optimize": cmd_optimize, "recipes": cmd_recipes, "report": cmd_report}
