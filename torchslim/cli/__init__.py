"""The `torchslim` command line: the command table, the parser, and one way to report errors."""
from __future__ import annotations

import argparse
import sys
import traceback

from ..errors import SlimError, first_line
from ..interrupt import exit_code, signal_name, sigterm_raises
from ..progress import calm_upstream, hide_upstream_bars, shown
from . import check, optimize, options, quant, train

# THE command table: name -> (add its sub-parser to the subparsers, run the parsed args -> exit code).
COMMANDS = {
    "optimize": (optimize.add_optimize, optimize.run_optimize),
    "recipes": (optimize.add_recipes, optimize.run_recipes),
    "report": (optimize.add_report, optimize.run_report),
    "sensitivity": (quant.add_sensitivity, quant.run_sensitivity),
    "recalibrate": (quant.add_recalibrate, quant.run_recalibrate),
    "train": (train.add_train, train.run_train),
    "qat": (train.add_qat, train.run_qat),
    "check": (check.add_check, check.run_check),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchslim", description="Make a trained PyTorch model smaller and faster, and prove it.",
                                parents=[options.debug(top=True)])
    sub = p.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_glue_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if not args.debug:
        calm_upstream()
    if getattr(args, "no_progress", False):
        hide_upstream_bars()
    try:
        with sigterm_raises(), shown(not getattr(args, "no_progress", False)):
            return COMMANDS[args.command][1](args)
    except SlimError as e:
        if args.debug:
            traceback.print_exc()
        what = e.what.strip().splitlines() or [""]  # one line: an upstream message quoted whole may run on
        print(f"torchslim: error: {what[0] if not args.debug else e.what}", file=sys.stderr)
        if e.fix:
            print(f"  what to do: {e.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (interrupt.Interrupted)
        print(f"torchslim: interrupted by {signal_name(e)}; the results so far are kept under --out "
              "(run the same command again to resume)", file=sys.stderr)
        return exit_code(e)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        if isinstance(e, MemoryError) or "can't allocate memory" in str(e):
            print(f"torchslim: error: out of memory: {first_line(e)}", file=sys.stderr)
            print("  what to do: use a smaller batch or size in --input-shape", file=sys.stderr)
            return 2
        print(f"torchslim: internal error: {type(e).__name__}: {first_line(e) if str(e) else ''}", file=sys.stderr)
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


__all__ = ["COMMANDS", "build_parser", "main"]
