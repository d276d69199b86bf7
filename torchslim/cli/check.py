"""`torchslim check MODEL_DIR`: re-time the saved folder's top recipes on this host (torchslim/check.py)."""
from __future__ import annotations

import argparse

from . import options


def add_check(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("check", help="does a saved model's choice still hold on this host? re-apply and re-time its top recipes",
                       parents=[options.device("cpu", "cpu", threads=True), options.progress(), options.debug()])
    c.add_argument("model", help="a model folder written by `torchslim optimize` (OUT/model)")
    c.add_argument("--weights", help="the trained FP32 state dict, for a folder saved lean whose spec builds untrained weights")
    c.add_argument("--time-budget", type=float, default=None, metavar="MINUTES", help="minutes for the recipes (default 1)")
    c.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    c.add_argument("--switch", action="store_true", help="save the recipe that wins here over MODEL (after the reload check)")
    c.add_argument("--out", default=None, help="keep the check's results.json and report.html here (default: not kept)")
    return c


def run_check(args) -> int:
    from ..check import CHECK_TIME_BUDGET_MIN, check

    result = check(args.model, weights=args.weights, rounds=args.rounds, threads=args.threads, switch=args.switch,
                   time_budget=CHECK_TIME_BUDGET_MIN if args.time_budget is None else args.time_budget, out=args.out,
                   progress=not args.no_progress)
    for line in result["lines"]:
        print(line)
    return 0
